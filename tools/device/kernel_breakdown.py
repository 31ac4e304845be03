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


def anchor_case(op: str, b: int, t: int):
    """(registry entry, shape, bf16 CUDA inputs, the fp32 reference's o) of ``op`` at (b, t) with H 16,
    K = V = 128, chunk 64: the case the variant scripts force their kernels on."""
    entry = registry.get(op)
    shape = {"B": b, "T": t, "H": 16, "K": 128, "V": 128, "form": "chunk", "chunk_size": 64}
    inputs = entry.make_inputs(shape, torch.bfloat16, "cuda", seed=0)
    ref = entry.run_reference(inputs, shape)
    return entry, shape, inputs, (ref[0] if isinstance(ref, tuple) else ref).float()


def checked_kernels(entry, shape, inputs, ref, label: str) -> dict:
    """One call of ``entry`` checked against ``ref`` (max abs error of o), then its kernels timed
    (``per_kernel``), printed under ``label``; a failure is recorded, not raised."""
    try:
        out = entry.run(inputs, shape)
        o = out[0] if isinstance(out, tuple) else out
        err = float((o.float() - ref).abs().max())
        ks = per_kernel(lambda: entry.run(inputs, shape))
        print(f"{label}: err {err} total {sum(k['us'] for k in ks):.1f} us " + str([round(k['us'], 1) for k in ks]),
              flush=True)
        return {"max_err": err, "kernels": ks}
    except Exception as e:  # noqa: BLE001
        print(f"{label}: FAILED {str(e)[:300]}", flush=True)
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


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
