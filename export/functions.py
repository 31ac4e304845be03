"""Bodies of the tvm_attn-domain ONNX functions: the fp32 reference of each op in standard ONNX ops, so any
runtime (onnxruntime, onnx.reference) runs an exported model without a plugin.

Semantics: docs/conventions.md. Both flash bodies compute the full [Tq, Tk] score matrix per head (memory
O(Tq·Tk)): they define the op, the tvm_attn kernels make it fast.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from . import DOMAIN

INT = ir.AttributeType.INT
FLOAT = ir.AttributeType.FLOAT
_BOOL, _F32, _I64 = ir.DataType.BOOL, ir.DataType.FLOAT, ir.DataType.INT64


class Body:
    """Records the nodes of a function body: ``b("MatMul", x, y)`` appends a node, returns its output."""

    def __init__(self) -> None:
        self.tape = ir.tape.Tape()

    def __call__(self, op: str, *inputs: ir.Value | None, **attrs) -> ir.Value:
        return self.tape.op(op, list(inputs), attrs or None)

    def const(self, value: float | Sequence[int], dtype: npt.DTypeLike = np.int64) -> ir.Value:
        return self("Constant", value=ir.tensor(np.asarray(value, dtype=dtype)))

    def attr(self, name: str, kind: ir.AttributeType) -> ir.Value:
        """A scalar holding the function's attribute ``name``."""
        field = {INT: "value_int", FLOAT: "value_float"}[kind]
        return self("Constant", **{field: ir.Attr(field, kind, None, ref_attr_name=name)})

    def dim(self, x: ir.Value, axis: int) -> ir.Value:
        """Size of ``x`` along ``axis``, a 1-element int64 tensor."""
        return self("Shape", x, start=axis, end=axis + 1)

    def iota(self, n: ir.Value) -> ir.Value:
        """0, 1, ..., n - 1 (int64) for a 1-element ``n``.

        An exclusive running sum of ones rather than ``Range``: TVM's frontend gives a Range a fresh
        symbolic length that it cannot match to the axis ``n`` came from."""
        ones = self("ConstantOfShape", n, value=ir.tensor(np.array([1], np.int64)))
        return self("CumSum", ones, self.const(0), exclusive=1)


def build_function(name: str, inputs: Sequence[str], outputs: Sequence[str], attributes: dict[str, ir.AttributeType],
                   body: Callable[..., tuple[ir.Value, ...]], opset: int) -> ir.Function:
    """The ONNX function ``tvm_attn.<name>``: ``body(b, *input values)`` returns the output values."""
    b = Body()
    ins = [ir.Value(name=n) for n in inputs]
    outs = body(b, *ins)
    for v, n in zip(outs, outputs):
        v.name = n
    graph = ir.Graph(ins, outs, nodes=b.tape.nodes, opset_imports={"": opset}, name=name)
    return ir.Function(DOMAIN, name, graph=graph, attributes=[ir.Attr(a, t, None) for a, t in attributes.items()])


def _attend(b: Body, q: ir.Value, k: ir.Value, v: ir.Value, allowed: ir.Value) -> tuple[ir.Value, ir.Value]:
    """q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D], allowed bool [Tq, Tk] -> out [B, Tq, Hq, D] (q's dtype),
    lse [B, Hq, Tq] fp32. A row with no allowed key gives zeros and lse = -inf."""
    qf, kf, vf = (b("Cast", x, to=_F32) for x in (q, k, v))
    batch, tq, hq, d = (b.dim(q, i) for i in range(4))
    hkv = b.dim(k, 2)
    # query head h reads kv head h // G: [B, Hq, Tq, D] -> [B, Hkv, G, Tq, D]
    q5 = b("Reshape", b("Transpose", qf, perm=[0, 2, 1, 3]), b("Concat", batch, hkv, b.const([-1]), tq, d, axis=0))
    k5 = b("Unsqueeze", b("Transpose", kf, perm=[0, 2, 3, 1]), b.const([2]))  # [B, Hkv, 1, D, Tk]
    v5 = b("Unsqueeze", b("Transpose", vf, perm=[0, 2, 1, 3]), b.const([2]))  # [B, Hkv, 1, Tk, D]
    s = b("Mul", b("MatMul", q5, k5), b.attr("scale", FLOAT))  # [B, Hkv, G, Tq, Tk]
    s = b("Where", allowed, s, b.const(-np.inf, np.float32))
    last = b.const([-1])
    m = b("ReduceMax", s, last, keepdims=1)
    m = b("Where", b("IsInf", m), b.const(0.0, np.float32), m)  # a row with no key: exp(-inf - 0) = 0
    e = b("Exp", b("Sub", s, m))
    l = b("ReduceSum", e, last, keepdims=1)
    # l >= 1 where a key is visible (its max term is exp(0)); a row with none has e = 0 and l = 0
    p = b("Div", e, b("Max", l, b.const(1.0, np.float32)))
    lse = b("Add", m, b("Log", l))  # log 0 = -inf
    o = b("MatMul", p, v5)  # [B, Hkv, G, Tq, D]
    o = b("Transpose", b("Reshape", o, b("Concat", batch, hq, tq, d, axis=0)), perm=[0, 2, 1, 3])
    return b("CastLike", o, q), b("Reshape", lse, b("Concat", batch, hq, tq, axis=0))


def _causal(b: Body, rq: ir.Value, rk: ir.Value) -> ir.Value:
    """[Tq, Tk] mask from the rows' offsets to their sequence's end (i - Tq, j - Tk): query i sees key j iff
    j - Tk <= i - Tq (bottom-right alignment); every pair when the ``causal`` attribute is 0."""
    vis = b("LessOrEqual", b("Unsqueeze", rk, b.const([0])), b("Unsqueeze", rq, b.const([1])))
    return b("Or", b("Not", b("Cast", b.attr("causal", INT), to=_BOOL)), vis)


def flash_fwd(b: Body, q: ir.Value, k: ir.Value, v: ir.Value) -> tuple[ir.Value, ir.Value]:
    """q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] -> out [B, Tq, Hq, D], lse [B, Hq, Tq]."""
    tq, tk = b.dim(q, 1), b.dim(k, 1)
    # i - Tq; the Cast (int64 to int64) makes the size a tensor for TVM's frontend, which keeps Shape symbolic
    rq, rk = (b("Sub", b.iota(n), b("Cast", n, to=_I64)) for n in (tq, tk))
    allowed = _causal(b, rq, rk)
    return _attend(b, q, k, v, allowed)


def _segments(b: Body, cu: ir.Value, total: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Per packed row: (sequence index, offset to the sequence's end = row - end), both int64 [total]."""
    cu = b("Cast", cu, to=_I64)
    rows = b.iota(total)
    ends = b("Slice", cu, b.const([1]), b.const([np.iinfo(np.int64).max]))  # [N]
    # sequence of row r = number of sequences ending at or before r
    done = b("LessOrEqual", b("Unsqueeze", ends, b.const([0])), b("Unsqueeze", rows, b.const([1])))  # [total, N]
    seq = b("ReduceSum", b("Cast", done, to=_I64), b.const([1]), keepdims=0)
    return seq, b("Sub", rows, b("Gather", ends, seq))


def flash_fwd_varlen(b: Body, q: ir.Value, k: ir.Value, v: ir.Value, cu_q: ir.Value,
                     cu_k: ir.Value) -> tuple[ir.Value, ir.Value]:
    """q [total_q, Hq, D], k/v [total_k, Hkv, D], cu_seqlens [N + 1] -> out [total_q, Hq, D], lse [Hq, total_q];
    each sequence attends on its own."""
    seq_q, rq = _segments(b, cu_q, b.dim(q, 0))
    seq_k, rk = _segments(b, cu_k, b.dim(k, 0))
    same = b("Equal", b("Unsqueeze", seq_q, b.const([1])), b("Unsqueeze", seq_k, b.const([0])))  # [Tq, Tk]
    allowed = b("And", same, _causal(b, rq, rk))
    zero = b.const([0])
    out, lse = _attend(b, *(b("Unsqueeze", x, zero) for x in (q, k, v)), allowed)
    return b("Squeeze", out, zero), b("Squeeze", lse, zero)
