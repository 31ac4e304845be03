"""The fused state and output kernel (``split_fused``) by variant (value tile, default warp count, pipeline
depth), each forced as the default (``DEFAULT_SPLIT_VARIANTS["fused"]``, the delta rules'
``["fused_delta"]``; no tuned records)
through the public call at (B, T) shapes of many (sequence, head) pairs (bf16, H 16, K = V = 128),
checked against the fp32 reference (max abs error of o) and timed per kernel
(``kernel_breakdown.per_kernel``), with the split kernels (state + output) of the same call forced in the
same process ("split"); never on segments of the sequences (``segment_variants.py``). Writes
$OUT/fused_variants.json after every point.
    python tools/device/fused_variants.py op[,op] B:T[,B:T] bv:warps:stages[,...]"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from bench.driver import provenance, write_json_atomic
from tools.device.kernel_breakdown import anchor_case, checked_kernels
from tvm_attn.ops.linear import build, torch_ops
from tvm_attn.ops.linear.kinds import OP_KINDS
from tvm_attn.schedules import linear as sched
from tvm_attn.tune import dispatch

OPS = sys.argv[1].split(",")
BT = [tuple(map(int, s.split(":"))) for s in sys.argv[2].split(",")]
VARIANTS = [tuple(map(int, s.split(":"))) for s in sys.argv[3].split(",")]
OUT = Path(os.environ.get("OUT", ".")) / "fused_variants.json"


def main():
    fused_pass, fused_segments = torch_ops.fused_pass, torch_ops.fused_segment_chunks
    torch_ops.fused_segment_chunks = lambda *a: 0  # (the kernel on whole sequences only)
    dispatch.lookup = lambda spec, tgt: None
    res = {"provenance": provenance("cuda"), "method": __doc__.split("   python")[0], "rows": []}
    for op in OPS:
        key = "fused_delta" if OP_KINDS[op][1] == "delta" else "fused"
        shipped = sched.DEFAULT_SPLIT_VARIANTS[key]
        for b, t in BT:
            entry, shape, inputs, ref = anchor_case(op, b, t)
            row = {"op": op, "B": b, "T": t, "shipped": shipped.key, "variants": {}}
            for vt in [None, *VARIANTS]:
                if vt is None:
                    torch_ops.fused_pass, name = (lambda *a: False), "split"
                else:
                    var = dataclasses.replace(shipped, block_v=vt[0], warps=vt[1], stages=vt[2])
                    sched.DEFAULT_SPLIT_VARIANTS[key] = var
                    torch_ops.fused_pass, name = (lambda *a: True), var.key
                build._by_spec.clear()
                row["variants"][name] = checked_kernels(entry, shape, inputs, ref, f"{op} ({b}, {t}) {name}")
            sched.DEFAULT_SPLIT_VARIANTS[key] = shipped
            torch_ops.fused_pass = fused_pass
            res["rows"].append(row)
            write_json_atomic(res, OUT)
    torch_ops.fused_segment_chunks = fused_segments


if __name__ == "__main__":
    main()
