"""torch -> ONNX for models that call tvm_attn ops: the dynamo exporter with one translation per rule."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir
import onnxscript
import torch

from tvm_attn import torch_ops  # noqa: F401  (registers torch.ops.tvm_attn.*)

from . import DOMAIN
from .rules import BY_ONNX_OP, RULES, ExportRule, register_schemas

_BUILTIN_NAMESPACES = ("aten", "prims")


def torch_op(qualname: str) -> torch._ops.OpOverload:
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name).default


def _translation(rule: ExportRule) -> Callable[..., Any]:
    """The exporter's translation of ``rule.torch_op``: one ``tvm_attn.<onnx_op>`` node."""
    names = [a.name for a in torch_op(rule.torch_op)._schema.arguments]
    opset = onnxscript.values.Opset(DOMAIN, 1)

    def translate(*args: Any) -> Any:
        named = dict(zip(names, args))
        tensors = [named.pop(n) for n in rule.inputs]
        return getattr(opset, rule.onnx_op)(*tensors, **rule.attribute_values(**named),
                                            _outputs=len(rule.outputs))

    return translate


def _check_rules(program: torch.export.ExportedProgram) -> None:
    """Name the first custom op of ``program`` that has no export rule."""
    for node in program.graph.nodes:
        op = node.target
        if isinstance(op, torch._ops.OpOverload) and op.namespace not in _BUILTIN_NAMESPACES and \
                op._schema.name not in RULES:
            raise NotImplementedError(
                f"torch op {op._schema.name} has no ONNX export rule; add an ExportRule to "
                f"tvm_attn.export.rules.RULES (rules exist for: {', '.join(sorted(RULES))})")


def _to_standard(graph: ir.Graph) -> None:
    """Rewrite each tvm_attn node into its rule's standard form where that form applies."""
    for node in list(graph):
        rule = BY_ONNX_OP.get(node.op_type) if node.domain == DOMAIN else None
        form = rule.standard(node) if rule is not None and rule.standard is not None else None
        if form is not None:
            new_nodes, new_values = form
            old_values = list(node.outputs[:len(new_values)])
            ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, old_values, new_values)


def _add_functions(model: ir.Model, opset: int) -> None:
    """Attach the model-local function of every tvm_attn op the graph still uses."""
    used = {n.op_type for n in model.graph.all_nodes() if n.domain == DOMAIN}
    for op_type in sorted(used):
        func = BY_ONNX_OP[op_type].function(opset)
        model.functions[func.identifier()] = func
    if not used:
        model.opset_imports.pop(DOMAIN, None)


def to_onnx(model: torch.nn.Module, args: Sequence[Any], path: str | os.PathLike | None = None, *,
            opset: int = 23, dynamic_shapes: Mapping[str, Any] | Sequence[Any] | None = None) -> onnx.ModelProto:
    """Export ``model(*args)`` to ONNX, tvm_attn ops included; write it to ``path`` when given.

    ``dynamic_shapes`` is ``torch.export``'s (``torch.export.Dim`` per symbolic axis): those axes stay
    symbolic in the file. Dense flash attention becomes the standard ``Attention`` op where the semantics
    match (lse unused; causal only with equal query and key lengths), every other tvm_attn op a
    ``tvm_attn``-domain node with a model-local function that standard runtimes run as is.

    Returns:
        The model (checked with ``onnx.checker.check_model(..., full_check=True)``).

    Raises:
        NotImplementedError: the model calls a custom torch op that has no export rule.
    """
    if opset < 23:
        raise ValueError(f"opset must be >= 23 (the first with the standard Attention op), got {opset}")
    register_schemas()
    program = torch.export.export(model, tuple(args), dynamic_shapes=dynamic_shapes, strict=False)
    _check_rules(program)
    onnx_program = torch.onnx.export(
        program, tuple(args), dynamo=True, opset_version=opset, verbose=False, dynamic_shapes=dynamic_shapes,
        custom_translation_table={torch_op(q): _translation(r) for q, r in RULES.items()})
    ir_model = onnx_program.model
    _to_standard(ir_model.graph)
    _add_functions(ir_model, opset)
    proto = ir.to_proto(ir_model)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
