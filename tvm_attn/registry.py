"""One declarative entry per op: what tests, the benchmark driver, tuning and export read.

An entry names its axes (fixed: part of a compiled specialisation; symbolic: free in one compiled
module), its tensors with named dimensions and dtypes, its fp32 torch reference, an input builder, and
exact FLOP and byte counts. Entries live beside their op (``tvm_attn/ops/<family>/__init__.py``) and are
loaded on first use, so ``import tvm_attn`` stays light. The registry imports nothing above it: an
entry names its public function by import path (``module:function``).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# families whose modules register entries, in the order `tvm-attn list` shows them
FAMILY_MODULES: tuple[str, ...] = ("tvm_attn.ops.flash", "tvm_attn.ops.linear")

Shape = Mapping[str, Any]  # one concrete point: axis name -> size, plus flags such as causal


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of an op: named dimensions (axis names), dtype (``None``: the op's dtype)."""

    name: str
    dims: tuple[str, ...]
    dtype: str | None = None


@dataclass(frozen=True)
class OpEntry:
    name: str
    family: str
    summary: str
    fixed_axes: Mapping[str, tuple]  # axis -> allowed values (e.g. head_dim -> (64, 128, 256))
    symbolic_axes: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dtypes: Mapping[str, tuple[str, ...]]  # device type -> supported dtypes
    reference: Callable[..., Any]  # fp32 torch reference: (**inputs, **params) -> outputs
    make_inputs: Callable[..., dict]  # (shape, dtype, device, seed) -> {name: tensor}
    params: Callable[[Shape], dict]  # shape -> keyword parameters of the op (causal, scale, ...)
    flops: Callable[[Shape], int]
    bytes: Callable[[Shape, str], int]  # (shape, dtype) -> bytes read + written, each once
    api: str  # "module:function", the public function
    shapes: Mapping[str, tuple[Shape, ...]] = field(default_factory=dict)  # named shape sets

    def function(self) -> Callable[..., Any]:
        mod, fn = self.api.split(":")
        return getattr(importlib.import_module(mod), fn)

    def run(self, inputs: Mapping[str, Any], shape: Shape) -> Any:
        """Call the public function on ``inputs`` (as built by ``make_inputs``) at ``shape``."""
        return self.function()(**inputs, **self.params(shape))

    def run_reference(self, inputs: Mapping[str, Any], shape: Shape) -> Any:
        return self.reference(**inputs, **self.params(shape))


_REGISTRY: dict[str, OpEntry] = {}
_loaded = False


def register(entry: OpEntry) -> OpEntry:
    if entry.name in _REGISTRY and _REGISTRY[entry.name] is not entry:
        raise ValueError(f"op {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def _load() -> None:
    global _loaded
    if not _loaded:
        for mod in FAMILY_MODULES:
            importlib.import_module(mod)
        _loaded = True


def get(name: str) -> OpEntry:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def all_ops() -> list[OpEntry]:
    _load()
    return list(_REGISTRY.values())
