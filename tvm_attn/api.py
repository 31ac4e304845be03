"""Public functions of tvm-attn: argument checks that name the bad argument, then the torch ops.

Conventions (layouts, GQA head map, causal alignment, scale, LSE): docs/conventions.md.
"""
from __future__ import annotations

import math
import os

import torch

from . import torch_ops  # noqa: F401  (registers torch.ops.tvm_attn.flash_fwd*)
from .ops.flash import CPU_HEAD_DIMS, HEAD_DIMS

_DTYPES = {"cuda": (torch.float16, torch.bfloat16), "cpu": (torch.float32, torch.float16, torch.bfloat16)}
_HEAD_DIMS = {"cuda": HEAD_DIMS, "cpu": CPU_HEAD_DIMS}


def _check_tensor(name: str, t, ndim: int, dims: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {dims} ({ndim} dims), got {tuple(t.shape)}")
    if t.device.type not in _DTYPES:
        raise ValueError(f"{name} is on {t.device}; tvm-attn runs on cpu and cuda devices")
    if t.dtype not in _DTYPES[t.device.type]:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in _DTYPES[t.device.type])
        raise TypeError(f"{name} has dtype {str(t.dtype).removeprefix('torch.')}; on {t.device.type} "
                        f"tvm-attn takes {allowed}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (layout {dims}); call .contiguous() first")
    if t.device.type == "cuda":
        check_aligned(name, t)


def check_aligned(name: str, t: torch.Tensor) -> None:
    """The CUDA kernels copy rows as 16-byte vectors: a tensor whose data starts inside one (a view with
    an odd storage offset) would fault the device, so it is refused by name."""
    if t.data_ptr() % 16:
        raise ValueError(f"{name} does not start at a 16-byte aligned address (a view with a storage offset "
                         f"of {t.storage_offset()} elements); the CUDA kernels load 16-byte vectors: call "
                         f".clone() first")


def check_like_q(q: torch.Tensor, **others: torch.Tensor) -> None:
    """Each of ``others`` is on q's device with q's dtype."""
    for name, t in others.items():
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}; q, k and v must share a dtype")


def _check_qkv(q, k, v, ndim: int, qdims: str, kdims: str) -> None:
    _check_tensor("q", q, ndim, qdims)
    _check_tensor("k", k, ndim, kdims)
    _check_tensor("v", v, ndim, kdims)
    check_like_q(q, k=k, v=v)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"head dim of k ({k.shape[-1]}) differs from q's ({d})")
    if d not in _HEAD_DIMS[q.device.type]:
        raise ValueError(f"head dim {d} of q is not supported on {q.device.type}; "
                         f"supported: {_HEAD_DIMS[q.device.type]}")
    hq, hkv = q.shape[-2], k.shape[-2]
    if hkv == 0 or hq == 0 or hq % hkv:
        raise ValueError(f"number of query heads ({hq}) must be a positive multiple of the number of "
                         f"key/value heads ({hkv}) (head ratio Hq/Hkv)")


def check_cu_seqlens(name: str, cu, device: torch.device) -> None:
    """``cu`` must be int32 ``[N + 1]`` (N >= 1), contiguous, on ``device``."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(f"{name} must have shape [N + 1] with N >= 1, got {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device} but q is on {device}")
    if not cu.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _scale(softmax_scale, d: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) or \
            not math.isfinite(softmax_scale):
        raise TypeError(f"softmax_scale must be a finite float or None, got {softmax_scale!r}")
    if softmax_scale <= 0:
        # the kernels mask hidden scores with -inf before scaling; a scale <= 0 would turn that into NaN
        raise ValueError(f"softmax_scale must be positive, got {softmax_scale!r}")
    return float(softmax_scale)


def _check_causal(causal) -> bool:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    return causal


def _check_finite(**tensors: torch.Tensor) -> None:
    # opt-in (TVM_ATTN_CHECK_FINITE=1): the check reads the data back, a host synchronisation
    if os.environ.get("TVM_ATTN_CHECK_FINITE") == "1":
        for name, t in tensors.items():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or infinite values")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    softmax_scale: float | None = None, return_lse: bool = False):
    """Fused attention forward (FlashAttention-2 structure on tensor cores).

    Args:
        q: ``[B, Tq, Hq, D]``; k, v: ``[B, Tk, Hkv, D]``; Hq a multiple of Hkv (MHA, GQA, MQA: query head
            h reads key/value head h // (Hq/Hkv)). CUDA: fp16 or bf16, D in {64, 128, 256};
            CPU: also fp32, D in {32, 64, 96, 128, 256}. Contiguous.
        causal: query i sees key j iff j <= i + Tk - Tq (aligned to the bottom-right).
        softmax_scale: default 1/sqrt(D).
        return_lse: also return the row log-sum-exp (natural log).

    Returns:
        ``out [B, Tq, Hq, D]`` (q's dtype), and with ``return_lse`` ``lse [B, Hq, Tq]`` (fp32). A row that
        sees no key gives zeros and lse = -inf.

    Conventions: docs/conventions.md.
    """
    _check_qkv(q, k, v, 4, "[B, Tq, Hq, D]", "[B, Tk, Hkv, D]")
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"batch of k ({k.shape[0]}) differs from q's ({q.shape[0]})")
    if q.shape[0] == 0 or q.shape[1] == 0 or k.shape[1] == 0:
        raise ValueError(f"empty sequence: q has shape {tuple(q.shape)}, k {tuple(k.shape)} "
                         "(batch and sequence lengths must be >= 1)")
    causal = _check_causal(causal)
    scale = _scale(softmax_scale, q.shape[-1])
    _check_finite(q=q, k=k, v=v)
    out, lse = torch.ops.tvm_attn.flash_fwd(q, k, v, causal, scale)
    return (out, lse) if return_lse else out


def flash_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                           causal: bool = False, softmax_scale: float | None = None, return_lse: bool = False):
    """Fused attention forward over packed sequences of different lengths.

    Args:
        q: ``[total_q, Hq, D]``; k, v: ``[total_k, Hkv, D]``: sequence n is rows
            ``cu_seqlens[n]:cu_seqlens[n + 1]``.
        cu_seqlens_q, cu_seqlens_k: int32 ``[N + 1]``, starting at 0, non-decreasing, on q's device.
        max_seqlen_q, max_seqlen_k: the longest query / key sequence (a host int: no synchronisation).
        causal, softmax_scale, return_lse: as in ``flash_attention``, per sequence.

    Returns:
        ``out [total_q, Hq, D]`` and with ``return_lse`` ``lse [Hq, total_q]`` (fp32).

    Conventions: docs/conventions.md.
    """
    _check_qkv(q, k, v, 3, "[total_q, Hq, D]", "[total_k, Hkv, D]")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        check_cu_seqlens(name, cu, q.device)
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q {tuple(cu_seqlens_q.shape)} and cu_seqlens_k "
                         f"{tuple(cu_seqlens_k.shape)} must describe the same number of sequences")
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"{name} must be a positive int, got {m!r}")
    if q.shape[0] == 0 or k.shape[0] == 0:
        raise ValueError(f"empty sequence: q has {q.shape[0]} rows and k {k.shape[0]} (need >= 1 each)")
    causal = _check_causal(causal)
    scale = _scale(softmax_scale, q.shape[-1])
    _check_finite(q=q, k=k, v=v)
    out, lse = torch.ops.tvm_attn.flash_fwd_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, causal, scale)
    return (out, lse) if return_lse else out
