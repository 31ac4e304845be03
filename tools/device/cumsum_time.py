"""The gate cumsum kernel (``split.gate_cumsum``) against torch's dense chunk-local cumsum on the same
gates: GPU kernel time (CUPTI) and back-to-back wall time; writes $OUT/cumsum.json."""
from __future__ import annotations

import json
import os

import torch

from bench.driver import kernel_time, time_calls
from tvm_attn.ops.linear.torch_ops import _chunk_local_cumsum

rows = []
for op, shp in (("gated_delta_rule", (1, 32768, 16)), ("gated_delta_rule", (8, 2048, 16)),
                ("gla", (1, 32768, 16, 128)), ("gla", (8, 2048, 16, 128))):
    for dt in (torch.bfloat16, torch.float32):
        g = (-torch.rand(shp, device="cuda") * 0.1).to(dt)
        ours = lambda: _chunk_local_cumsum(op, g, None, None, 64, 128, 128)
        b, t = shp[:2]

        def torch_ref():
            x = g.float().view(b, t // 64, 64, *shp[2:]).cumsum(2)
            return x.view(shp)
        ref = torch_ref()
        got = ours()
        err = (got - ref).abs().max().item()
        r = {"op": op, "shape": shp, "dtype": str(dt), "max_abs_err_vs_torch": err,
             "ours_gpu_ms": kernel_time([ours], "cuda") * 1e3, "torch_gpu_ms": kernel_time([torch_ref], "cuda") * 1e3,
             "ours_wall_ms": time_calls([ours], "cuda") * 1e3, "torch_wall_ms": time_calls([torch_ref], "cuda") * 1e3}
        rows.append(r)
        print(json.dumps(r), flush=True)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "."), "cumsum.json"), "w"), indent=1)
