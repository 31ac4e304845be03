"""Shared test helpers: devices, FlashAttention's error rule, NaN-poisoned kernel calls."""
from __future__ import annotations

import os

import pytest
import torch

# keep compiled modules of a test run apart from the user's cache
os.environ.setdefault("TVM_ATTN_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache",
                                                         "tvm_attn_kernels"))

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")

LOW_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def rounding_term(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """FlashAttention's atol: twice the rounding error of the output's values in ``dtype``."""
    r = ref.to(dtype)
    return 2 * float(((r + 0.3 - 0.3) - r).abs().max()) + (1e-5 if dtype == torch.float32 else 0.0)


def assert_fa_rule(name: str, out: torch.Tensor, ref: torch.Tensor, ref_lowp: torch.Tensor) -> None:
    """err(out) <= 2 * err(reference computed in the low dtype) + rounding term, all against fp32 ``ref``."""
    assert not torch.isnan(out).any(), f"{name}: NaN in the output (an element was never written?)"
    err = float((out.float() - ref).abs().max())
    err_ref = float((ref_lowp.float() - ref).abs().max())
    bound = 2 * err_ref + rounding_term(ref, out.dtype)
    assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e} (low-precision reference {err_ref:.3e})"


def assert_lse(lse: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    assert not torch.isnan(lse).any(), "NaN in lse"
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(lse), inf), "rows with no visible key must have lse = -inf (and only those)"
    assert (lse[inf] < 0).all()
    err = float((lse[~inf] - ref[~inf]).abs().max()) if (~inf).any() else 0.0
    assert err <= tol, f"lse max error {err:.3e} > {tol:.1e}"
