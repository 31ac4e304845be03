"""One call of a linear op (ours, or fla's with a third argument ``fla``) inside the NVTX range ``prof``,
after warm-up calls (compiles, fla's autotune), for Nsight Compute to profile that call's kernels only:

    ncu --clock-control none --nvtx --nvtx-include "prof/" python3 tools/device/nvtx_call.py OP B:T [fla]

bf16, H 16, K = V = 128, chunk 64."""
from __future__ import annotations

import sys

import torch

from bench.baselines import BASELINES
from tvm_attn import registry

op, bt = sys.argv[1], sys.argv[2]
b, t = map(int, bt.split(":"))
entry = registry.get(op)
shape = next(s for s in entry.shapes["anchors"] if (s["B"], s["T"]) == (b, t))
inputs = entry.make_inputs(shape, torch.bfloat16, "cuda", seed=0)
fn = BASELINES["fla"](entry, shape, inputs) if sys.argv[3:] == ["fla"] else (lambda: entry.run(inputs, shape))
for _ in range(3):
    fn()
torch.cuda.synchronize()
torch.cuda.nvtx.range_push("prof")
fn()
torch.cuda.synchronize()
torch.cuda.nvtx.range_pop()
