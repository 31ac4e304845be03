"""tvm-attn: attention operators in Apache TVM TensorIR, scheduled for tensor cores, autotuned per GPU.

Public functions (conventions: docs/conventions.md):

* ``flash_attention(q, k, v, *, causal=False, softmax_scale=None, return_lse=False)``
* ``flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, ...)``

Importing the package is cheap: TVM and the torch ops load on first use.
"""
from __future__ import annotations

import importlib
import os

__version__ = "0.1.0"

# In a source checkout the shipped data and schedule packages (schedules/, export/, tuning_logs/) sit at
# the repository root; an installed wheel maps them into this package (pyproject.toml). Either way they
# import as tvm_attn.schedules, tvm_attn.export, ...
_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedules")) and \
        os.path.isfile(os.path.join(_root, "schedules", "flash.py")):
    __path__.append(_root)  # noqa: F821  (the package's own search path)

# public name -> module that defines it (importing the module registers its torch ops)
_API = {
    "flash_attention": ".api",
    "flash_attention_varlen": ".api",
    "linear_attention": ".ops.linear.api",
    "simple_gla": ".ops.linear.api",
    "gla": ".ops.linear.api",
    "delta_rule": ".ops.linear.api",
    "gated_delta_rule": ".ops.linear.api",
    "ttt_linear": ".ops.linear.api",
    "retnet": ".ops.linear.api",
    "mamba2_ssd": ".ops.linear.api",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name], __name__), name)
    raise AttributeError(f"module 'tvm_attn' has no attribute {name!r}")
