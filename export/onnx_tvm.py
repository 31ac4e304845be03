"""ONNX -> TVM: TVM Relax's ONNX frontend, with tvm-attn's TensorIR flash kernel behind the tvm_attn ops
and the standard ``Attention`` op.

The frontend looks converters up by op type only, ignores model-local functions and has no hook for
custom converters; ``converters(target)`` patches its table for the duration of one import and always
restores it. A tvm_attn-domain op without a converter here is inlined (its function body is standard ops).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx.numpy_helper

from tvm_attn import _tvm, kernels
from tvm_attn.kernels import KernelSpec
from tvm_attn.ops.flash import CPU_HEAD_DIMS, HEAD_DIMS

from . import DOMAIN

TARGETS = ("llvm", "cuda")
# (bb, inputs, attributes, params) -> relax expression: the frontend's converter signature
Converter = Callable[[Any, list, dict, Any], Any]


@dataclass(frozen=True)
class _Fixed:
    """Adapter: a converter for every opset (the frontend calls ``get_converter(opset)``)."""

    convert: Converter

    def get_converter(self, opset: int) -> Converter:
        return self.convert


def _scheduled(spec: KernelSpec, target: str) -> tuple[Any, str]:
    """The scheduled flash PrimFunc that ``kernels.get(spec, device)`` compiles for the torch ops on this
    target, and its schedule name (``Kernel.schedule``). CUDA (GPU 0): the tuned record that
    ``tune.dispatch.lookup`` accepts for this card (stale or slower records are refused there), else the
    default decision. CPU: the ``apply_cpu`` schedule (no CPU records are shipped)."""
    if target == "cuda":
        import torch

        from tvm_attn.tune import dispatch, tasks

        tgt = kernels.device_target(torch.device("cuda", 0))
        best = dispatch.lookup(spec, tgt)
        if best is not None:
            variant = tasks.variant_from_key(spec, "cuda", best.variant_key)
            return tasks.replay(spec, "cuda", variant, best.trace).mod["main"], kernels.tuned_plan(spec, tgt, best).name
        sch = kernels.cuda_schedule(spec, kernels.default_variant(spec))
        return sch.mod["main"], kernels.default_plan(spec, tgt).name
    from tvm_attn.ops.flash.compute import FlashTiles, flash_forward
    from tvm_attn.schedules.flash import apply_cpu

    sch = _tvm.Schedule(flash_forward(kernels.flash_static(spec), FlashTiles(*kernels.CPU_TILES)))
    apply_cpu(sch)
    return sch.mod["main"], kernels.default_plan(spec, kernels.DeviceTarget("cpu")).name


# spec key -> schedule name of every flash kernel emitted by the import in progress (set by converters())
_SCHEDULES: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("tvm_attn_onnx_schedules")


def _kernel_func(spec: KernelSpec, target: str):
    """``_scheduled(spec, target)``'s PrimFunc with its scalar parameters moved before the outputs (call_tir
    passes its arguments to the leading parameters and appends the outputs)."""
    func, schedule = _scheduled(spec, target)
    _SCHEDULES.get({})[spec.key] = schedule
    scalars = [p for p in func.params if isinstance(p.ty, _tvm.tvm.ir.PrimType)]
    tensors = [p for p in func.params if not isinstance(p.ty, _tvm.tvm.ir.PrimType)]  # ..., out, lse
    func = _tvm.tirx.PrimFunc(tensors[:-2] + scalars + tensors[-2:], func.body, func.ret_type, func.attrs)
    # the frontend's module has its own "main"; dlight must leave the kernel's schedule alone
    return func.without_attr("global_symbol").with_attr("tirx.is_scheduled", True)


def _flash(bb, q, k, v, *, causal: bool, scale: float | None, target: str, cu: tuple = ()):
    """Emit the flash kernel on q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] -> (out, lse [B, Hq, Tq]).

    ``cu``: (cu_seqlens_q, cu_seqlens_k, max_seqlen_q) for the packed form (B = 1). fp16/bf16 models run
    the kernel in their own dtype. On CUDA the tensor-core kernel takes fp16/bf16 only: the q, k, v of an
    fp32 model are cast to fp16 there (fp32 accumulation, the output cast back to fp32), so an fp32 model's
    attention on CUDA carries fp16 rounding; export in fp16/bf16 for CUDA.
    """
    relax, _ = _tvm.relax_onnx()
    op = relax.op
    b, tq, hq, d = q.ty.shape.values
    hkv = k.ty.shape.values[2]
    for name, n in (("Hq", hq), ("Hkv", hkv), ("D", d)):
        if not isinstance(n, _tvm.tirx.IntImm):
            raise NotImplementedError(f"the tvm_attn converter needs a static {name}, got {n}")
    hq, hkv, d = int(hq), int(hkv), int(d)
    head_dims = HEAD_DIMS if target == "cuda" else CPU_HEAD_DIMS
    if d not in head_dims:
        raise NotImplementedError(f"head dim {d} is not supported by the tvm_attn kernel on {target}: {head_dims}")
    dtype = q.ty.dtype
    if target == "cuda" and dtype == "float32":
        q, k, v = (bb.normalize(op.astype(x, "float16")) for x in (q, k, v))
    spec = KernelSpec("flash_fwd_varlen" if cu else "flash_fwd", d, hq // hkv, q.ty.dtype, causal)
    gv = bb.add_func(_kernel_func(spec, target), f"{spec.key}_{target}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    args = relax.Tuple([q, k, v, *cu[:2], *cu[2:], relax.prim_value(scale, "float32")])
    res = bb.emit(relax.call_tir(gv, args, [relax.TensorType(q.ty.shape, q.ty.dtype),
                                            relax.TensorType([b, hq, tq], "float32")]))
    if q.ty.dtype == dtype:
        return res
    return bb.emit(relax.Tuple([op.astype(relax.TupleGetItem(res, 0), dtype), relax.TupleGetItem(res, 1)]))


def _flash_fwd(target: str) -> Converter:
    def convert(bb, inputs, attr, params):
        q, k, v = (bb.normalize(x) for x in inputs[:3])
        return _flash(bb, q, k, v, causal=bool(attr["causal"]), scale=attr["scale"], target=target)

    return convert


def _max_len(bb, cu):
    """max(cu[n + 1] - cu[n]) as an int32 PrimValue (read back to the host: the kernel's grid size)."""
    relax, _ = _tvm.relax_onnx()
    op = relax.op
    n = cu.ty.shape.values[0]
    ends, starts = (op.strided_slice(cu, [0], [b], [e], assume_inbound=True) for b, e in ((1, n), (0, n - 1)))
    lens = op.subtract(ends, starts)  # [N]
    shape = bb.emit(op.tensor_to_shape(op.astype(op.max(lens, axis=[0], keepdims=True), "int64")))
    m = _tvm.tirx.Var("max_seqlen_q", "int64")
    bb.match_cast(shape, relax.ShapeType([m]))
    return _tvm.tirx.Cast("int32", m)


def _flash_fwd_varlen(target: str) -> Converter:
    def convert(bb, inputs, attr, params):
        relax, _ = _tvm.relax_onnx()
        op = relax.op
        q, k, v = (bb.normalize(op.expand_dims(x, 0)) for x in inputs[:3])  # [1, total, H, D]
        cu_q, cu_k = (bb.normalize(x) for x in inputs[3:5])
        res = _flash(bb, q, k, v, causal=bool(attr["causal"]), scale=attr["scale"], target=target,
                     cu=(cu_q, cu_k, _max_len(bb, cu_q)))
        return relax.Tuple([op.squeeze(relax.TupleGetItem(res, i), [0]) for i in range(2)])

    return convert


_UNSUPPORTED_INPUTS = {3: "attn_mask", 4: "past_key", 5: "past_value", 6: "nonpad_kv_seqlen"}


def _check_attention(inputs: list, attr: dict) -> None:
    """Name what the flash kernel does not implement of the standard ``Attention``."""
    for i, name in _UNSUPPORTED_INPUTS.items():
        if inputs[i] is not None:
            raise NotImplementedError(f"Attention input {name!r} is not supported by the tvm_attn converter")
    for name in ("softcap", "qk_matmul_output_mode"):
        if attr.get(name):
            raise NotImplementedError(f"Attention attribute {name}={attr[name]} is not supported by the "
                                      "tvm_attn converter")
    if attr["tvm_custom"]["num_outputs"] > 1:
        raise NotImplementedError("Attention outputs other than Y (present_key, present_value, "
                                  "qk_matmul_output) are not supported by the tvm_attn converter")


def _attention(target: str, original: Any) -> Converter:
    """The standard ``Attention`` (opset 23+) on the flash kernel; com.microsoft's (it has ``num_heads``)
    goes to the frontend's own converter."""

    def convert(bb, inputs, attr, params):
        if "num_heads" in attr:
            return original.get_converter(23)(bb, inputs, attr, params)
        _check_attention(inputs, attr)
        relax, _ = _tvm.relax_onnx()
        op = relax.op
        q, k, v = (bb.normalize(x) for x in inputs[:3])
        flat = len(q.ty.shape.values) == 3
        if flat:  # [B, T, H·D] -> [B, T, H, D]
            heads = (attr["q_num_heads"], attr["kv_num_heads"], attr["kv_num_heads"])
            q, k, v = (bb.normalize(op.reshape(x, [*x.ty.shape.values[:2], h, -1])) for x, h in zip((q, k, v), heads))
        else:  # [B, H, T, D] -> [B, T, H, D]
            q, k, v = (bb.normalize(op.permute_dims(x, [0, 2, 1, 3])) for x in (q, k, v))
        causal = bool(attr.get("is_causal", 0))
        tq, tk = q.ty.shape.values[1], k.ty.shape.values[1]
        if causal and not _tvm.tvm.sym.Analyzer().can_prove_equal(tq, tk):
            raise NotImplementedError(
                f"Attention with is_causal=1 and query length {tq} != key length {tk}: ONNX aligns that mask "
                "to the top-left, the tvm_attn kernel to the bottom-right (they agree when the lengths are equal)")
        out = relax.TupleGetItem(_flash(bb, q, k, v, causal=causal, scale=attr.get("scale"), target=target), 0)
        if flat:
            return op.reshape(out, [*q.ty.shape.values[:2], -1])
        return op.permute_dims(out, [0, 2, 1, 3])

    return convert


# tvm_attn-domain op -> its converter for a target; an op missing here is inlined (its function body)
DOMAIN_CONVERTERS: dict[str, Callable[[str], Converter]] = {
    "FlashFwd": _flash_fwd,
    "FlashFwdVarlen": _flash_fwd_varlen,
}


@contextlib.contextmanager
def converters(target: str) -> Iterator[dict[str, str]]:
    """Patch the Relax ONNX frontend's converter table with tvm-attn's for ``target``; always restored.
    Yields a dict that fills with ``spec key -> schedule name`` of the flash kernels the import emits."""
    _, frontend = _tvm.relax_onnx()
    original = frontend._get_convert_map
    ours = {name: _Fixed(make(target)) for name, make in DOMAIN_CONVERTERS.items()}
    ours["Attention"] = _Fixed(_attention(target, original()["Attention"]))
    frontend._get_convert_map = lambda: {**original(), **ours}
    schedules: dict[str, str] = {}
    token = _SCHEDULES.set(schedules)
    try:
        yield schedules
    finally:
        _SCHEDULES.reset(token)
        frontend._get_convert_map = original


_CONSTANT_DTYPES = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                    "value_ints": np.int64}


def _inline_unconverted(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline the function bodies of tvm_attn ops without a converter; their ``Constant`` nodes then hold
    ``value_float`` / ``value_int`` (from attribute references), which TVM's frontend cannot read: made
    ``value`` tensors."""
    names = [(f.domain, f.name) for f in model.functions if f.domain == DOMAIN and f.name not in DOMAIN_CONVERTERS]
    if not names:
        return model
    model = onnx.inliner.inline_selected_functions(model, names)
    for node in model.graph.node:
        kind = node.attribute[0].name if node.op_type == "Constant" and node.attribute else None
        if kind in _CONSTANT_DTYPES:
            value = np.asarray(onnx.helper.get_attribute_value(node.attribute[0]), _CONSTANT_DTYPES[kind])
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", onnx.numpy_helper.from_array(value)))
    return model


class TvmModel:
    """An ONNX model compiled by TVM: call it with the graph's inputs in order (torch tensors in, torch
    tensors out; a model with several outputs returns a tuple)."""

    def __init__(self, executable, device, input_names: list[str], schedules: dict[str, str] | None = None) -> None:
        relax, _ = _tvm.relax_onnx()
        self.vm = relax.VirtualMachine(executable, device)
        self.input_names = input_names
        # spec key -> schedule of each flash kernel inside (the names kernels.get gives the torch ops)
        self.schedules = dict(schedules or {})

    def __call__(self, *inputs: Any) -> Any:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}")
        out = self.vm["main"](*inputs)
        return tuple(out) if isinstance(out, _tvm.tvm_ffi.Array) else out


def from_onnx(model: str | os.PathLike | onnx.ModelProto, *, target: str = "llvm") -> TvmModel:
    """Compile an ONNX model with TVM for ``target`` ("llvm": this CPU, "cuda": GPU 0 of this machine).

    tvm_attn-domain ops and the standard ``Attention`` run tvm-attn's flash kernel with the schedule the
    torch ops get from ``kernels.get`` (CUDA: this card's tuned record when dispatch accepts one, else the
    default tensor-core decision, in the model's fp16/bf16; an fp32 model's attention runs in fp16 on
    CUDA. CPU: the ``apply_cpu`` schedule); ``TvmModel.schedules`` names them. tvm_attn ops without a
    converter run their function bodies; every other op goes through TVM's ONNX frontend (on CUDA its
    kernels are scheduled by dlight). Batch and sequence axes stay symbolic.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    proto = _inline_unconverted(proto)
    _, frontend = _tvm.relax_onnx()
    with converters(target) as schedules:
        mod = frontend.from_onnx(proto)
    if target == "cuda":
        import torch

        arch = kernels.device_target(torch.device("cuda", 0)).arch
        # the flash build's options; cp.async rewrites only the copies a software pipeline marked async,
        # so a kernel without a pipeline (and dlight's kernels) compile as they would without it
        ex, dev = _tvm.compile_module(mod, _tvm.cuda_target(arch), _tvm.build_config()), _tvm.tvm.cuda(0)
    else:
        ex, dev = _tvm.compile_module(mod, _tvm.cpu_target()), _tvm.tvm.cpu(0)
    initializers = {i.name for i in proto.graph.initializer}
    return TvmModel(ex, dev, [i.name for i in proto.graph.input if i.name not in initializers], schedules)
