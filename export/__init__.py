"""ONNX export and import of tvm-attn models (shipped as ``tvm_attn.export``).

* ``to_onnx(model, args, path)``: torch -> ONNX. Dense flash attention becomes the standard ``Attention``
  op where the semantics match; other tvm_attn ops become ``tvm_attn``-domain nodes backed by model-local
  functions in standard ops, so onnxruntime runs the file without a plugin. Rules: ``export/rules.py``.
* ``from_onnx(path_or_model, target=...)``: ONNX -> TVM Relax, with the tvm_attn ops and ``Attention``
  lowered to tvm-attn's TensorIR flash kernel, everything else through TVM's ONNX frontend.

The submodules load on first use (``import tvm_attn.export`` stays cheap for the CLI).
"""
from __future__ import annotations

import importlib

DOMAIN = "tvm_attn"  # ONNX domain of the ops without a standard equivalent

_NAMES = {"to_onnx": ".torch_onnx", "from_onnx": ".onnx_tvm", "RULES": ".rules", "ExportRule": ".rules"}
__all__ = ["DOMAIN", *sorted(_NAMES)]


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module 'tvm_attn.export' has no attribute {name!r}")
