"""gla's state kernel (``split_gla.state``) by variant: each (value tile, key tile, warps, pipeline depth)
forced as the kernel's default (``DEFAULT_SPLIT_VARIANTS["state_gla"]``, no tuned records) and run through
the public call at the anchors (bf16, H 16, K = V = 128), checked against the fp32 reference, the op's
GPU kernel time per call (``bench.driver.kernel_time``; only the state kernel differs between variants)
against fla's in the same process. Writes $OUT/gla_state_variants.json after every shape.
    python tools/device/gla_state_variants.py [bv:bk:warps:stages,...]"""
from __future__ import annotations

import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

GRID = ("64:32:2:3,64:32:2:2,64:32:1:3,32:32:2:3,32:32:2:2,32:32:1:3,32:32:1:4,64:64:4:2,64:64:4:1,64:64:4:3,"
        "64:64:2:2,32:64:4:2,32:64:2:2,128:32:2:2,64:128:4:1,64:128:8:1,128:128:8:1,128:64:4:1,64:16:1:3,32:16:1:3")
VARIANTS = [tuple(int(x) for x in v.split(":")) for v in (sys.argv[1] if len(sys.argv) > 1 else GRID).split(",")]
OUT = Path(os.environ.get("OUT", ".")) / "gla_state_variants.json"


def force(v):
    """Make ``v`` (bv, bk, warps, stages) gla's state kernel default, with no tuned records; its key."""
    from tvm_attn.ops.linear import build
    from tvm_attn.schedules import linear as sched
    from tvm_attn.tune import dispatch

    variant = variant_of(v)
    sched.DEFAULT_SPLIT_VARIANTS["state_gla"] = variant
    dispatch.lookup = lambda spec, tgt: None
    build._by_spec.clear()
    return variant.key


def variant_of(v):
    from tvm_attn.schedules.linear import LinearVariant

    bv, bk, warps, stages = v
    return LinearVariant(bv, warps, 0, bk, stages)


def compile_one(v):
    import torch

    from tvm_attn.ops.linear import build

    name = force(v)
    t = time.time()
    try:
        build.get(build.LinearSpec("gla", "chunk", 128, 128, "bfloat16", False, 64, "state"), torch.device("cuda", 0))
        return name, f"{time.time() - t:.0f} s"
    except Exception as e:  # noqa: BLE001
        return name, f"FAILED {type(e).__name__}: {str(e)[:300]}"


def main():
    from bench.driver import provenance
    from state_variants import measure  # (this script's folder is on sys.path)

    t0 = time.time()
    with Pool(min(14, os.cpu_count() or 4)) as p:
        built = dict(p.imap_unordered(compile_one, VARIANTS))
    for name, how in built.items():
        print(name, how, flush=True)
    print(f"compiled in {time.time() - t0:.0f} s", flush=True)
    result = {"provenance": provenance("cuda"), "method": __doc__.split("   python")[0], "compiled": built,
              "rows": [], "complete": False}
    ok = [v for v in VARIANTS if not built[variant_of(v).key].startswith("FAILED")]
    measure(["gla"], [lambda v=v: force(v) for v in ok], result, OUT)


if __name__ == "__main__":
    main()
