"""``tvm-attn export`` and ``tvm-attn run-onnx``: sub-commands added by ``add_commands(subparsers)``.

Heavy imports (torch, onnx, TVM) happen inside the commands, so building the parser stays cheap.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

TARGETS = ("llvm", "cuda")
EXAMPLE_NAMES = ("llama-block",)  # the keys of examples.EXAMPLES (that module imports torch)
DEFAULT_DIM = 32  # size of a symbolic axis that --dim does not set


def add_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write an example model that calls tvm_attn ops as ONNX")
    e.add_argument("--example", required=True, choices=EXAMPLE_NAMES)
    e.add_argument("--out", default="model.onnx", help="ONNX file to write (default model.onnx)")
    e.add_argument("--opset", type=int, default=23)
    e.set_defaults(func=_export)
    r = sub.add_parser("run-onnx", help="run an ONNX file through TVM (tvm-attn kernels) and onnxruntime; "
                       "print the max difference and the times")
    r.add_argument("model", help="ONNX file")
    r.add_argument("--target", choices=TARGETS, default="llvm")
    r.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help=f"size of a symbolic input axis (repeatable; default {DEFAULT_DIM})")
    r.add_argument("--repeat", type=int, default=10, help="timed runs per engine (median reported)")
    r.add_argument("--tol", type=float, default=1e-3, help="exit 1 when the max difference exceeds this")
    r.set_defaults(func=_run_onnx)


def _export(args: argparse.Namespace) -> int:
    from .examples import EXAMPLES
    from .torch_onnx import to_onnx

    ex = EXAMPLES[args.example]()
    proto = to_onnx(ex.model, ex.args, args.out, opset=args.opset, dynamic_shapes=ex.dynamic_shapes)
    ops = sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in proto.graph.node})
    print(f"wrote {args.out}: inputs {', '.join(_describe(i) for i in proto.graph.input)}; ops {', '.join(ops)}")
    return 0


def _describe(value_info: Any) -> str:
    dims = [d.dim_param or str(d.dim_value) for d in value_info.type.tensor_type.shape.dim]
    return f"{value_info.name}[{', '.join(dims)}]"


def _random_inputs(proto: Any, sizes: dict[str, int]) -> dict[str, Any]:
    """Seeded standard-normal inputs for the graph's float inputs, symbolic axes from ``sizes``."""
    import onnx
    import torch

    g = torch.Generator().manual_seed(0)
    initializers = {i.name for i in proto.graph.initializer}
    out = {}
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if dtype.kind != "f":
            raise ValueError(f"run-onnx makes random float inputs; input {vi.name!r} is {dtype}")
        shape = [d.dim_value or sizes.get(d.dim_param, DEFAULT_DIM) for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = torch.randn(*shape, generator=g).to(getattr(torch, dtype.name))
    return out


def _median_s(fn: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> float:
    fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _max_diff(a: Any, b: Any) -> float:
    """Max abs difference, infinities compared by position (a mismatch counts as inf)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    return float(np.nan_to_num(np.abs(np.where(same_inf, 0.0, a - b)), nan=np.inf).max(initial=0.0))


def _run_onnx(args: argparse.Namespace) -> int:
    import onnx
    import onnxruntime as ort
    import torch

    from .onnx_tvm import from_onnx

    sizes = {k: int(v) for k, v in (d.split("=", 1) for d in args.dim)}
    proto = onnx.load(args.model)
    inputs = _random_inputs(proto, sizes)
    device = "cuda" if args.target == "cuda" else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    model = from_onnx(proto, target=args.target)
    compile_s = time.perf_counter() - t0
    dev_inputs = [x.to(device) for x in inputs.values()]
    tvm_out = model(*dev_inputs)
    tvm_out = tvm_out if isinstance(tvm_out, tuple) else (tvm_out,)
    tvm_s = _median_s(lambda: model(*dev_inputs), args.repeat, sync)

    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in inputs.items()}
    ort_out = sess.run(None, feed)
    ort_s = _median_s(lambda: sess.run(None, feed), args.repeat, lambda: None)

    print(f"inputs: {', '.join(f'{k}{list(v.shape)}' for k, v in inputs.items())}")
    worst = 0.0
    for info, t, o in zip(proto.graph.output, tvm_out, ort_out):
        diff = _max_diff(t.cpu().numpy(), o)
        worst = max(worst, diff)
        print(f"output {info.name}{list(o.shape)}: max |TVM - onnxruntime| = {diff:.3e}")
    print(f"TVM ({args.target}): compile {compile_s:.2f} s, run {tvm_s * 1e3:.3f} ms (median of {args.repeat})")
    print(f"onnxruntime (CPU): run {ort_s * 1e3:.3f} ms (median of {args.repeat})")
    return 0 if worst <= args.tol else 1
