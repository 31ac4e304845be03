"""The ``tvm-attn`` command: demo, bench, bench-onnx, tune, list, show, export, run-onnx."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# modules that add sub-commands: each has add_commands(subparsers)
_COMMAND_MODULES = ("tvm_attn.demo", "tvm_attn.tune.cli", "tvm_attn.export.cli")


def _bench(args: argparse.Namespace) -> int:
    from tvm_attn.bench import driver, report

    where = dict(w.split("=", 1) for w in args.where)
    result = driver.run(ops=args.op or None, shapes=args.shapes, where=where,
                        baselines=args.baselines.split(",") if args.baselines is not None else None,
                        dtype=args.dtype, out=Path(args.out) if args.out else None)
    if args.update_readme:
        report.update_readme()
    failed = [r for r in result["rows"] if "ours_s" not in r]
    return 1 if failed else 0


def _bench_onnx(args: argparse.Namespace) -> int:
    from tvm_attn.bench import onnx_block

    return onnx_block.main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvm-attn", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time ops against baselines (correctness-gated)")
    b.add_argument("--op", action="append", help="op name from the registry (repeatable; default all)")
    b.add_argument("--shapes", default="quick", help="quick | anchors | FILE.json ({op: [shape, ...]})")
    b.add_argument("--baselines", default=None, help="comma list: sdpa-flash,sdpa-cudnn,sdpa-efficient,"
                   "sdpa-math,flex,fla (default: all that apply to the device)")
    b.add_argument("--where", action="append", default=[], metavar="AXIS=VALUE",
                   help="keep only shapes with this axis value, e.g. --where D=128 (repeatable)")
    b.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    b.add_argument("--out", default=None, help="results folder (JSON + markdown + PNG under <out>/<gpu-key>/)")
    b.add_argument("--update-readme", action="store_true", help="regenerate the README's performance section")
    b.set_defaults(func=_bench)
    o = sub.add_parser("bench-onnx", help="export an example block to ONNX, compile it back through TVM, check it "
                       "against torch and time it against torch eager and onnxruntime (JSON + markdown)")
    o.add_argument("--example", default="llama-block", choices=("llama-block",), help="example model to export")
    o.add_argument("--target", default=None, choices=("cuda", "llvm"),
                   help="TVM target; cuda runs on GPU 0 (default: cuda when a GPU is present, else llvm)")
    o.add_argument("--batch", default=None, help="comma list of batch sizes (default: cuda 1,4; llvm 2)")
    o.add_argument("--seq", type=int, default=None, help="sequence length (default: cuda 2048; llvm 64)")
    o.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="model dtype (default: cuda float16; llvm float32)")
    o.add_argument("--out", default=None, help="results folder: cuda writes <out>/<gpu-key>/onnx-<stamp>.json/.md "
                   "(default bench/results); llvm writes <out>/onnx-<stamp>.json/.md (nothing without --out)")
    o.set_defaults(func=_bench_onnx)
    for mod in _COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
