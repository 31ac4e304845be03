"""``tvm-attn tune``, ``tvm-attn list`` and ``tvm-attn show``."""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


def _specs(args) -> list:
    from tvm_attn.kernels import KernelSpec

    if args.op in _linear_ops():
        return _linear_specs(args)
    masks = [False, True] if args.causal == "both" else [args.causal == "yes"]
    return [KernelSpec(args.op, d, g, dt, c)
            for d, g, dt, c in itertools.product(args.head_dim, args.group, args.dtype, masks)]


def _linear_ops() -> tuple[str, ...]:
    from tvm_attn.ops.linear.torch_ops import SPLIT_OPS

    return SPLIT_OPS


def _linear_specs(args) -> list:
    """Every split chunk kernel of a linear op (K = V = head dim): prep (delta rules), state (each of its
    tilings: one record per shape class), output, and (not gla) the fused state and output."""
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.kinds import OP_KINDS, SPLIT_TILINGS

    gate, rule = OP_KINDS[args.op]
    out = []
    for d, dt in itertools.product(args.head_dim, args.dtype):
        parts = ("prep", "state", "output") if rule == "delta" else ("state", "output")
        for part in parts + (("fused",) if gate != "vector" else ()):
            if args.part and part not in args.part:
                continue
            tilings = ("", *SPLIT_TILINGS.get((part, rule, gate), ()))
            if args.tiling is not None and part == "state":
                if args.tiling not in tilings:
                    raise SystemExit(f"--tiling {args.tiling}: the {args.op} state kernel's tilings are "
                                     f"{', '.join(t or 'default' for t in tilings)}")
                tilings = (args.tiling,)
            for tiles in tilings:
                out.append(LinearSpec(args.op, "chunk", d, d, dt, False, args.chunk, part, tiles))
    return out


def _tune(args: argparse.Namespace) -> int:
    from tvm_attn.tune import records
    from tvm_attn.tune.run import tune

    device = args.device
    if args.op in _linear_ops() and device != "cuda":
        raise SystemExit(f"--op {args.op}: the linear-attention kernels are tuned on CUDA only "
                         "(their CPU schedule has no knobs)")
    arch, gpu = None, args.gpu or "cpu"
    if device == "cuda":
        import torch

        from tvm_attn.kernels import device_target

        tgt = device_target(torch.device("cuda", 0))
        arch, gpu = tgt.arch, args.gpu or tgt.card
    rpc = None
    if args.rpc_tracker:
        host, port = args.rpc_tracker.rsplit(":", 1)
        if not args.rpc_key:
            raise SystemExit("--rpc-tracker needs --rpc-key")
        rpc = (host, int(port), args.rpc_key)
    out = Path(args.out) if args.out else records.user_root()
    results = []
    for spec in _specs(args):
        print(f"== tuning {spec.key} on {gpu} ({args.trials} trials)", flush=True)
        results.append(tune(spec, device=device, gpu=gpu, arch=arch, trials=args.trials, out_root=out,
                            resume=args.resume, rpc=rpc, workers=args.workers))
    print(f"\n{'spec':<56} {'variant':<15} {'default ms':>11} {'tuned ms':>9} {'speed-up':>8} {'TFLOP/s':>8}")
    for r in results:
        print(f"{r.spec.key:<56} {r.best_variant:<15} {r.default_s * 1e3:11.3f} {r.tuned_s * 1e3:9.3f} "
              f"{r.default_s / r.tuned_s:8.2f} {r.flops / r.tuned_s / 1e12:8.1f}")
        print(f"  records: {r.folder}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from tvm_attn import registry
    from tvm_attn.tune import records

    print("ops:")
    for e in registry.all_ops():
        print(f"  {e.name:<20} {e.family:<8} {e.summary}")
    print("tuned records (gpu / specialisation / best variant / trials):")
    rows = records.listing()
    for r in rows:
        prov = r.provenance
        print(f"  {r.gpu:<10} {r.spec:<42} {prov['best']['variant']:<10} {prov['trials']:>5}  {r.path}")
    if not rows:
        print("  none")
    return 0


def _show(args: argparse.Namespace) -> int:
    from tvm_attn.tune import records

    gpu, spec = args.record.split("/", 1)
    rec = records.find(gpu, spec)
    if rec is None:
        raise SystemExit(f"no record {args.record}; `tvm-attn list` shows what exists")
    prov = rec.provenance
    print(json.dumps({k: v for k, v in prov.items() if k != "target"}, indent=1))
    from tvm_attn.kernels import DeviceTarget
    from tvm_attn.tune import tasks as T
    from tvm_attn.tune.dispatch import load_best

    fam = T.family_of_key(spec)
    ks = fam.spec_from_key(spec)
    best = load_best(ks, DeviceTarget(prov["device"], None, gpu), rec)
    sch = fam.replay(ks, prov["device"], fam.variant_from_key(ks, prov["device"], best.variant_key), best.trace)
    print(f"decisions of the best record ({best.variant_key}):")
    for line in sch.trace.as_python():
        if "sample_" in line:
            print("  " + line)
    d_s, t_s = prov["default"]["measured_s"], prov["best"]["measured_s"]
    print(f"default {d_s * 1e3:.3f} ms, tuned {t_s * 1e3:.3f} ms ({d_s / t_s:.2f}x)")
    print(f"plot: {rec.path / 'tuning.png'}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tune", help="tune specialisations with MetaSchedule for this GPU (or the CPU)")
    t.add_argument("--gpu", default=None, help="card key for the records (default: from the device name)")
    t.add_argument("--op", default="flash_fwd", choices=["flash_fwd", *_linear_ops()],
                   help="flash_fwd, or a linear op (its split chunk kernels, CUDA only)")
    t.add_argument("--head-dim", type=int, nargs="+", default=[128], help="head dim (linear ops: K = V)")
    t.add_argument("--chunk", type=int, default=64, help="linear ops: the chunk size tuned")
    t.add_argument("--part", nargs="+", choices=["prep", "state", "output", "fused"], default=None,
                   help="linear ops: only these kernels (default: all of the op's)")
    t.add_argument("--tiling", default=None, type=lambda s: "" if s == "default" else s,
                   help="linear ops: only this state tiling (one shape class: default, or a name such as "
                        "many, v32, v64; default: every tiling)")
    t.add_argument("--group", type=int, nargs="+", default=[1], help="Hq / Hkv")
    t.add_argument("--dtype", nargs="+", default=["bfloat16"])
    t.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    t.add_argument("--trials", type=int, default=64, help="measured trials per specialisation")
    t.add_argument("--resume", action="store_true", help="continue the records of an interrupted run")
    t.add_argument("--out", default=None, help="records root (default ~/.cache/tvm_attn/tuning_logs; "
                   "use tuning_logs/ to ship them)")
    t.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    t.add_argument("--workers", type=int, default=None, help="builder processes")
    t.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="measure through a TVM RPC tracker")
    t.add_argument("--rpc-key", default=None)
    t.set_defaults(func=_tune)
    ls = sub.add_parser("list", help="ops, and which cards have tuned records")
    ls.set_defaults(func=_list)
    sh = sub.add_parser("show", help="one tuned record: decisions, provenance, speed")
    sh.add_argument("record", help="<gpu>/<spec>, e.g. h100/flash_fwd_d128_g1_bfloat16_causal")
    sh.set_defaults(func=_show)
