"""The fused state and output kernel (``split_fused``) by variant (value tile, default warp count, pipeline
depth), each forced as the default (``DEFAULT_SPLIT_VARIANTS["fused"]``, the delta rules'
``["fused_delta"]``; no tuned records)
through the public call at (B, T) shapes of many (sequence, head) pairs (bf16, H 16, K = V = 128),
checked against the fp32 reference (max abs error of o) and timed per kernel
(``kernel_breakdown.per_kernel``), with the split kernels (state + output) of the same call forced in the
same process ("split"). Writes
$OUT/fused_variants.json after every point.
    python tools/device/fused_variants.py op[,op] B:T[,B:T] bv:warps:stages[,...]"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch

from bench.driver import provenance, write_json_atomic
from tools.device.kernel_breakdown import per_kernel
from tvm_attn import registry
from tvm_attn.ops.linear import build, torch_ops
from tvm_attn.ops.linear.kinds import OP_KINDS
from tvm_attn.schedules import linear as sched
from tvm_attn.tune import dispatch

OPS = sys.argv[1].split(",")
BT = [tuple(map(int, s.split(":"))) for s in sys.argv[2].split(",")]
VARIANTS = [tuple(map(int, s.split(":"))) for s in sys.argv[3].split(",")]
OUT = Path(os.environ.get("OUT", ".")) / "fused_variants.json"


def main():
    fused_pass = torch_ops.fused_pass
    dispatch.lookup = lambda spec, tgt: None
    res = {"provenance": provenance("cuda"), "method": __doc__.split("   python")[0], "rows": []}
    for op in OPS:
        entry = registry.get(op)
        key = "fused_delta" if OP_KINDS[op][1] == "delta" else "fused"
        shipped = sched.DEFAULT_SPLIT_VARIANTS[key]
        for b, t in BT:
            shape = {"B": b, "T": t, "H": 16, "K": 128, "V": 128, "form": "chunk", "chunk_size": 64}
            inputs = entry.make_inputs(shape, torch.bfloat16, "cuda", seed=0)
            ref = entry.run_reference(inputs, shape)
            ref = (ref[0] if isinstance(ref, tuple) else ref).float()
            row = {"op": op, "B": b, "T": t, "shipped": shipped.key, "variants": {}}
            for vt in [None, *VARIANTS]:
                if vt is None:
                    torch_ops.fused_pass, name = (lambda *a: False), "split"
                else:
                    var = dataclasses.replace(shipped, block_v=vt[0], warps=vt[1], stages=vt[2])
                    sched.DEFAULT_SPLIT_VARIANTS[key] = var
                    torch_ops.fused_pass, name = (lambda *a: True), var.key
                build._by_spec.clear()
                try:
                    out = entry.run(inputs, shape)
                    o = out[0] if isinstance(out, tuple) else out
                    err = float((o.float() - ref).abs().max())
                    row["variants"][name] = {"max_err": err, "kernels": per_kernel(lambda: entry.run(inputs, shape))}
                    ks = row["variants"][name]["kernels"]
                    print(f"{op} ({b}, {t}) {name}: err {err} total {sum(k['us'] for k in ks):.1f} us "
                          + str([round(k['us'], 1) for k in ks]), flush=True)
                except Exception as e:  # noqa: BLE001
                    row["variants"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                    print(f"{op} ({b}, {t}) {name}: FAILED {str(e)[:300]}", flush=True)
            sched.DEFAULT_SPLIT_VARIANTS[key] = shipped
            torch_ops.fused_pass = fused_pass
            res["rows"].append(row)
            write_json_atomic(res, OUT)


if __name__ == "__main__":
    main()
