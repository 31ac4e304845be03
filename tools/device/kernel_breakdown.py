"""Each kernel of one call, ours and fla's, in launch order with its GPU time (CUPTI through torch.profiler,
median over 10 calls) at the anchors (bf16, H 16, K = V = 128): where a linear op's time goes. Our kernels
are all named main_kernel; their order is the call's (cumsum, prep, state, output for the delta rules).
Writes $OUT/kernel_breakdown.json; FLA=0 leaves fla out.   python tools/device/kernel_breakdown.py [op,...] [B:T,...]"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.baselines import BASELINES
from bench.driver import provenance, write_json_atomic
from tvm_attn import registry

OPS = sys.argv[1].split(",") if len(sys.argv) > 1 else ["gated_delta_rule"]
BT = [tuple(map(int, s.split(":"))) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else None
CALLS = 10
OUT = Path(os.environ.get("OUT", ".")) / "kernel_breakdown.json"


def per_kernel(fn) -> list[dict]:
    fn()
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            fn()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
    ev.sort(key=lambda e: e.time_range.start)
    n = len(ev) // CALLS
    out = []
    for i in range(n):
        calls = [ev[c * n + i] for c in range(CALLS)]
        out.append({"kernel": calls[0].name[:90], "us": statistics.median(e.time_range.elapsed_us() for e in calls)})
    return out


def main():
    res = {"provenance": provenance("cuda"), "method": __doc__.split("   python")[0], "rows": [], "complete": False}
    for op in OPS:
        entry = registry.get(op)
        for shape in entry.shapes["anchors"]:
            if BT and (shape["B"], shape["T"]) not in BT:
                continue
            inputs = entry.make_inputs(shape, torch.bfloat16, "cuda", seed=0)
            row = {"op": op, "B": shape["B"], "T": shape["T"], "ours": per_kernel(lambda: entry.run(inputs, shape))}
            fla = BASELINES["fla"](entry, shape, inputs) if os.environ.get("FLA", "1") != "0" else "left out"
            if not isinstance(fla, str):
                fla()
                row["fla"] = per_kernel(fla)
            res["rows"].append(row)
            for side in ("ours", "fla"):
                ks = row.get(side, [])
                print(f"{op} ({shape['B']}, {shape['T']}) {side}: total {sum(k['us'] for k in ks):.1f} us: "
                      + ", ".join(f"{k['kernel'][:40]} {k['us']:.1f}" for k in ks), flush=True)
            write_json_atomic(res, OUT)  # after every row: a run cut by its timeout keeps what it measured
    res["complete"] = True
    write_json_atomic(res, OUT)


if __name__ == "__main__":
    main()
