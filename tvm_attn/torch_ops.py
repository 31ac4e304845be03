"""torch.library custom ops over the compiled kernels: zero-copy (DLPack through tvm-ffi), CPU and CUDA,
no host synchronisation, opaque to torch.compile (fake implementations give the output shapes).

The public, argument-checking functions are in ``tvm_attn.api``; these ops assume checked inputs.
"""
from __future__ import annotations

import torch

from . import kernels
from .kernels import KernelSpec


def _spec(op: str, q: torch.Tensor, k: torch.Tensor, causal: bool) -> KernelSpec:
    return KernelSpec(op, q.shape[-1], q.shape[-2] // k.shape[-2], str(q.dtype).removeprefix("torch."), causal)


@torch.library.custom_op("tvm_attn::flash_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def flash_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
              softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    kern = kernels.get(_spec("flash_fwd", q, k, causal), q.device)
    b, tq, hq, _ = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((b, hq, tq), dtype=torch.float32, device=q.device)
    kern(q, k, v, out, lse, softmax_scale)
    return out, lse


@flash_fwd.register_fake
def _(q, k, v, causal, softmax_scale):
    b, tq, hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((b, hq, tq), dtype=torch.float32)


@torch.library.custom_op("tvm_attn::flash_fwd_varlen", mutates_args=(), device_types=("cpu", "cuda"))
def flash_fwd_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, causal: bool,
                     softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    kern = kernels.get(_spec("flash_fwd_varlen", q, k, causal), q.device)
    tq, hq, _ = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((hq, tq), dtype=torch.float32, device=q.device)
    # the kernel sees packed tensors as one batch row: [1, total, H, D], lse [1, H, total]
    kern(q[None], k[None], v[None], cu_seqlens_q, cu_seqlens_k, out[None], lse[None], max_seqlen_q, softmax_scale)
    return out, lse


@flash_fwd_varlen.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, causal, softmax_scale):
    tq, hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((hq, tq), dtype=torch.float32)
