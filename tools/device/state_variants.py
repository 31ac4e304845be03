"""The delta rules' (``RULE=add``: the add rule's) state kernel by variant (tiling x pipeline depth), each
forced as the dispatched tiling's default (``DEFAULT_SPLIT_VARIANTS``) through the public call, at the
anchors (bf16, H 16, K = V = 128), checked against the fp32 reference, timed against fla in the same
process (GPU kernel time per call, ``bench.driver.kernel_time``). Tuned records are left out (every
kernel runs its default decision), so the variants differ in the state kernel only. Writes
$OUT/state_variants.json after every point. Extra variants with another default warp count:
``tiling:warps`` (``default:1``: the 16-wide tile with one warp, which then owns its value tile and forms
V' in registers).
    python tools/device/state_variants.py [op,...] [stages,...] [tiling:warps,...]"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

OPS = sys.argv[1].split(",") if len(sys.argv) > 1 else ["gated_delta_rule", "delta_rule"]
STAGES = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0, 1, 2]
# dispatched tiling -> default's key, by the ops' state rule (all ops of one run share it)
TILINGS = ({"": "state", "many": "state_many", "mid": "state_mid"} if os.environ.get("RULE") == "add"
           else {"": "state_delta", "v32": "state_v32", "v64": "state_v64"})
# (tiling, default warp count or None: the shipped one)
EXTRA = sys.argv[3].split(",") if len(sys.argv) > 3 else []
TILE_WARPS = [(t, None) for t in TILINGS] + [("" if t == "default" else t, int(w))
                                             for t, w in (x.split(":") for x in EXTRA)]
OUT = Path(os.environ.get("OUT", ".")) / "state_variants.json"


def force(tiling: str, stages: int | None, warps: int | None = None):
    """Make ``tiling`` the dispatched state tiling, at ``stages`` (None: as shipped) and ``warps`` (None:
    the shipped default warp count); no tuned records."""
    from tvm_attn.ops.linear import build, torch_ops
    from tvm_attn.schedules import linear as sched
    from tvm_attn.tune import dispatch

    if not hasattr(force, "shipped"):
        force.shipped = dict(sched.DEFAULT_SPLIT_VARIANTS)
        force.tiling = torch_ops.state_tiling
    key = TILINGS[tiling]
    sched.DEFAULT_SPLIT_VARIANTS.update(force.shipped)
    if stages is not None:
        sched.DEFAULT_SPLIT_VARIANTS[key] = dataclasses.replace(force.shipped[key], stages=stages,
                                                                warps=warps or force.shipped[key].warps)
    dispatch.lookup = lambda spec, tgt: None
    build._by_spec.clear()
    torch_ops.state_tiling = (lambda *a: tiling) if stages is not None else force.tiling
    return sched.DEFAULT_SPLIT_VARIANTS[key].key


def combos():
    return [(op, t, w, s) for op in OPS for t, w in TILE_WARPS for s in STAGES]


def compile_one(c):
    import torch

    from tvm_attn.ops.linear import build

    op, tiling, warps, stages = c
    name = force(tiling, stages, warps)
    t = time.time()
    try:
        build.get(build.LinearSpec(op, "chunk", 128, 128, "bfloat16", False, 64, "state", tiling),
                  torch.device("cuda", 0))
        return f"{op} {tiling or 'default'} {name}: {time.time() - t:.0f} s"
    except Exception as e:  # noqa: BLE001
        return f"{op} {tiling or 'default'} {name}: FAILED {type(e).__name__}: {str(e)[:300]}"


def measure(ops, variants, result: dict, out: Path) -> None:
    """For each op and anchor shape (bf16): fla checked against the fp32 reference and timed, then each of
    ``variants`` (callables that force a kernel variant and return its name) forced in turn, checked, and
    timed where it passed (GPU kernel time per call of the op); rows into ``result``, written to ``out``
    after every shape."""
    import torch

    from bench.baselines import BASELINES
    from bench.driver import check, check_baseline, kernel_time, reference, write_json_atomic
    from tvm_attn import registry

    for op in ops:
        entry = registry.get(op)
        for shape in entry.shapes["anchors"]:
            inputs = entry.make_inputs(shape, torch.bfloat16, "cuda", seed=0)
            refs = reference(entry, shape, inputs)
            row = {"op": op, "B": shape["B"], "T": shape["T"], "H": shape["H"], "ms": {}, "check": {}}
            fla = BASELINES["fla"](entry, shape, inputs)
            if not isinstance(fla, str):
                row["fla_check"] = check_baseline(entry, fla, refs, "bfloat16")
                row["fla_ms"] = kernel_time([fla], "cuda") * 1e3
            for variant in variants:
                name = variant()
                chk = check(entry, shape, inputs, entry.run(inputs, shape), refs)
                row["check"][name] = chk
                if chk["ok"]:
                    row["ms"][name] = kernel_time([lambda: entry.run(inputs, shape)], "cuda") * 1e3
            result["rows"].append(row)
            print(json.dumps({k: row[k] for k in ("op", "B", "T", "ms")} | {"fla_ms": row.get("fla_ms")}),
                  flush=True)
            write_json_atomic(result, out)
            del inputs, refs
            torch.cuda.empty_cache()
    result["complete"] = True
    write_json_atomic(result, out)


def main():
    from bench.driver import provenance

    t0 = time.time()
    with Pool(min(14, os.cpu_count() or 4)) as p:
        for line in p.imap_unordered(compile_one, combos()):
            print(line, flush=True)
    print(f"compiled in {time.time() - t0:.0f} s", flush=True)
    result = {"provenance": provenance("cuda"), "method": __doc__.split("   python")[0], "rows": [],
              "complete": False}
    variants = [lambda t=t, w=w, s=s: f"{t or 'default'} {force(t, s, w)}" for t, w in TILE_WARPS for s in STAGES]
    variants.append(lambda: (force("", None), "dispatched")[1])
    measure(OPS, variants, result, OUT)


if __name__ == "__main__":
    main()
