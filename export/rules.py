"""Export rules: how each tvm_attn torch custom op becomes ONNX, one ``ExportRule`` per op in ``RULES``.

Every op exports as a node of the ``tvm_attn`` domain backed by a model-local ONNX function (its reference
in standard ops, ``functions.py``). A rule may also give a standard form: a rewrite of the node into
standard ONNX ops (``Attention`` for flash_fwd) used wherever it has the same semantics.

Adding an op: write its function body in ``functions.py`` and one ``ExportRule`` below.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from . import DOMAIN
from . import functions as fn
from .functions import FLOAT, INT

FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")
# type of each tensor of an op: "T" (the op's float type) or a fixed ONNX type
Tensors = Mapping[str, str]
StandardForm = tuple[Sequence[ir.Node], Sequence[ir.Value]]  # new nodes, values replacing the node's outputs


@dataclass(frozen=True)
class ExportRule:
    """How one torch custom op exports: a ``tvm_attn.<onnx_op>`` node, its function, its OpSchema."""

    torch_op: str  # qualified name of the torch custom op, "tvm_attn::flash_fwd"
    onnx_op: str  # op type in the tvm_attn domain
    inputs: Tensors  # the op's tensor arguments (named as in its torch schema)
    outputs: Tensors
    attributes: Mapping[str, ir.AttributeType]
    attribute_values: Callable[..., dict[str, int | float]]  # the op's other arguments, by name -> attributes
    body: Callable[..., tuple[ir.Value, ...]]  # (Body, *inputs) -> outputs in standard ops
    standard: Callable[[ir.Node], StandardForm | None] | None = None  # None where it does not apply

    def function(self, opset: int) -> ir.Function:
        return fn.build_function(self.onnx_op, list(self.inputs), list(self.outputs), dict(self.attributes),
                                 self.body, opset)

    def schema(self) -> onnx.defs.OpSchema:
        param = onnx.defs.OpSchema.FormalParameter
        return onnx.defs.OpSchema(
            self.onnx_op, DOMAIN, 1, doc=f"torch op {self.torch_op} (tvm-attn); body: a model-local function",
            inputs=[param(n, t) for n, t in self.inputs.items()],
            outputs=[param(n, t) for n, t in self.outputs.items()],
            type_constraints=[("T", list(FLOAT_TYPES), "the op's float type")],
            attributes=[onnx.defs.OpSchema.Attribute(n, _SCHEMA_ATTR[t], "") for n, t in self.attributes.items()])


_SCHEMA_ATTR = {INT: onnx.defs.OpSchema.AttrType.INT, FLOAT: onnx.defs.OpSchema.AttrType.FLOAT}


def _unused(v: ir.Value) -> bool:
    return not v.uses() and not v.is_graph_output()


def _static(shape: ir.Shape | None, *axes: int) -> list[int] | None:
    if shape is None or not all(isinstance(shape[a], int) for a in axes):
        return None
    return [shape[a] for a in axes]


def _same_length(q: ir.Value, k: ir.Value) -> bool:
    """Whether q and k provably have the same sequence length (axis 1): equal sizes or one symbol."""
    if q.shape is None or k.shape is None:
        return False
    a, b = q.shape[1], k.shape[1]
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a.value is not None and a.value == b.value


def attention_form(node: ir.Node) -> StandardForm | None:
    """FlashFwd as the standard ``Attention`` (opset 23) on [B, T, H·D] inputs with q/kv_num_heads.

    Applies when lse is unused and, for causal, Tq = Tk: ``Attention``'s is_causal is aligned to the
    top-left, tvm-attn's to the bottom-right; they agree only on square masks.
    """
    q, k, v = node.inputs
    out, lse = node.outputs
    causal = node.attributes["causal"].value
    heads = _static(q.shape, 2, 3)
    kv_heads = _static(k.shape, 2)
    if not _unused(lse) or (causal and not _same_length(q, k)) or heads is None or kv_heads is None:
        return None
    tape = ir.tape.Tape()
    merge = tape.op("Constant", [], {"value": ir.tensor(np.array([0, 0, -1], np.int64))})
    q3, k3, v3 = (tape.op("Reshape", [x, merge]) for x in (q, k, v))  # [B, T, H·D]
    y = tape.op("Attention", [q3, k3, v3], {"is_causal": causal, "scale": node.attributes["scale"].value,
                                            "q_num_heads": heads[0], "kv_num_heads": kv_heads[0]})
    split = tape.op("Constant", [], {"value": ir.tensor(np.array([0, 0, *heads], np.int64))})
    o = tape.op("Reshape", [y, split])
    o.shape, o.type = out.shape, out.type
    return tape.nodes, [o]


def _flash_attributes(causal: bool, softmax_scale: float, **_: object) -> dict[str, int | float]:
    return {"causal": int(causal), "scale": float(softmax_scale)}


_FLASH_ATTRIBUTES = {"causal": INT, "scale": FLOAT}

RULES: dict[str, ExportRule] = {r.torch_op: r for r in (
    ExportRule(
        torch_op="tvm_attn::flash_fwd", onnx_op="FlashFwd",
        inputs={"q": "T", "k": "T", "v": "T"}, outputs={"out": "T", "lse": "tensor(float)"},
        attributes=_FLASH_ATTRIBUTES, attribute_values=_flash_attributes, body=fn.flash_fwd,
        standard=attention_form),
    ExportRule(
        torch_op="tvm_attn::flash_fwd_varlen", onnx_op="FlashFwdVarlen",
        # max_seqlen_q is a launch hint of the kernel, not part of the op's meaning: the importer recomputes it
        inputs={"q": "T", "k": "T", "v": "T", "cu_seqlens_q": "tensor(int32)", "cu_seqlens_k": "tensor(int32)"},
        outputs={"out": "T", "lse": "tensor(float)"},
        attributes=_FLASH_ATTRIBUTES, attribute_values=_flash_attributes, body=fn.flash_fwd_varlen),
)}

BY_ONNX_OP: dict[str, ExportRule] = {r.onnx_op: r for r in RULES.values()}


def register_schemas() -> None:
    """Register each rule's OpSchema with onnx once (the dynamo exporter looks the ops up there)."""
    for rule in RULES.values():
        if not onnx.defs.has(rule.onnx_op, DOMAIN):
            onnx.defs.register_schema(rule.schema())
