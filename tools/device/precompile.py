"""Fill the on-disk kernel cache with every split kernel the linear ops can call at K = V = 128, chunk 64
(dense and varlen; bf16 unless a second argument lists dtypes), in parallel, so a bench that follows
times rather than compiles.  python tools/device/precompile.py [op,op,...] [dtype,...]"""
from __future__ import annotations

import itertools
import os
import sys
import time
from multiprocessing import Pool

OPS = sys.argv[1].split(",") if len(sys.argv) > 1 else ["linear_attention", "simple_gla", "gla", "delta_rule",
                                                          "gated_delta_rule"]
DT = sys.argv[2].split(",") if len(sys.argv) > 2 else ["bfloat16"]


def specs():
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.kinds import OP_KINDS, SEGMENT_TILING, SPLIT_TILINGS

    for op, dt, varlen in itertools.product(OPS, DT, (False, True)):
        gate, rule = OP_KINDS[op]
        parts = [("prep", "")] if rule == "delta" else []
        parts += [("state", t) for t in ("", *SPLIT_TILINGS.get(("state", rule, gate), ()))]
        parts += [("output", "")]
        if gate != "vector":  # the fused state and output (torch_ops.fused_pass; every op but gla)
            parts += [("fused", "")]
        if rule == "add" and gate != "vector" and varlen:  # the sequences in segments (torch_ops._segmented;
            # the fused kernel on them is the varlen fused spec above)
            parts += [("state_local", SEGMENT_TILING), ("state", SEGMENT_TILING), ("carry", "")]
        for part, tiles in parts:
            yield LinearSpec(op, "chunk", 128, 128, dt, varlen, 64, part, tiles)
        if gate != "none":
            for gdt in {dt, "float32"}:
                yield LinearSpec(op, "chunk", 128, 128, gdt, varlen, 64, "cumsum", "")


def one(spec):
    import torch

    from tvm_attn.ops.linear import build

    t = time.time()
    try:
        build.get(spec, torch.device("cuda", 0))
        return f"{spec.key:70s} {time.time() - t:5.1f} s"
    except Exception as e:  # noqa: BLE001
        return f"{spec.key:70s} FAILED {type(e).__name__}: {str(e)[:100]}"


if __name__ == "__main__":
    t0 = time.time()
    todo = list(specs())
    with Pool(min(14, os.cpu_count() or 4)) as p:
        for line in p.imap_unordered(one, todo):
            print(line, flush=True)
    print(f"precompiled {len(todo)} specs in {time.time() - t0:.0f} s", flush=True)
