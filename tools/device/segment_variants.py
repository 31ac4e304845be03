"""The add rule's recurrence split along the sequence with the fused state and output kernel run on the
segments (``torch_ops.fused_segment_chunks``), by segment length, each forced through the public call at
(B, T) shapes of few (sequence, head) pairs (bf16, H 16, K = V = 128), checked against the fp32
reference (max abs error of o) and timed per kernel (``kernel_breakdown.per_kernel``), beside the split
kernels of the same call ("split": the state pass, segmented where ``state_segment_chunks`` says, and the
output kernel) and the dispatch's own pick ("auto"), in the same process. Writes
$OUT/segment_variants.json after every point.
    python tools/device/segment_variants.py op[,op] B:T[,B:T] chunks[,chunks...]"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from bench.driver import provenance, write_json_atomic
from tools.device.kernel_breakdown import anchor_case, checked_kernels
from tvm_attn.ops.linear import torch_ops
from tvm_attn.tune import dispatch

OPS = sys.argv[1].split(",")
BT = [tuple(map(int, s.split(":"))) for s in sys.argv[2].split(",")]
SEGS = [int(s) for s in sys.argv[3].split(",")]
OUT = Path(os.environ.get("OUT", ".")) / "segment_variants.json"


def main():
    shipped = torch_ops.fused_segment_chunks
    dispatch.lookup = lambda spec, tgt: None
    res = {"provenance": provenance("cuda"), "method": __doc__.split("   python")[0], "rows": []}
    for op in OPS:
        for b, t in BT:
            entry, shape, inputs, ref = anchor_case(op, b, t)
            auto = shipped(op, b, 16, 128, 128, 64, -(-t // 64), torch.device("cuda", 0))
            row = {"op": op, "B": b, "T": t, "auto_segment_chunks": auto, "variants": {}}
            for seg in ["auto", "split", *SEGS]:
                torch_ops.fused_segment_chunks = (shipped if seg == "auto" else
                                                  (lambda *a, s=seg: 0 if s == "split" else s))
                name = seg if isinstance(seg, str) else f"fused_seg{seg}"
                row["variants"][name] = checked_kernels(entry, shape, inputs, ref, f"{op} ({b}, {t}) {name}")
            torch_ops.fused_segment_chunks = shipped
            res["rows"].append(row)
            write_json_atomic(res, OUT)


if __name__ == "__main__":
    main()
