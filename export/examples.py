"""Example models for ``tvm-attn export --example``: small, seeded, with symbolic batch and sequence axes."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import tvm_attn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in fp32, cast back (as Llama does): the export then carries the casts, so a runtime that sums
        # in the tensor's dtype (TVM's ReduceMean of an fp16 tensor accumulates in fp16) does not lose the
        # mean of squares to fp16 rounding or overflow (sum of squares > 65504: RMS > 5.7 at hidden 2048)
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(max_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_len, head_dim] of rotary position embedding (rotate-half form)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # [D/2]
    angle = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq  # [max_len, D/2]
    return torch.cat([angle, angle], -1).cos(), torch.cat([angle, angle], -1).sin()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D] at positions 0 .. T-1; cos, sin [T, D]."""
    d = x.shape[-1]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos[:, None, :] + torch.cat([-x2, x1], -1) * sin[:, None, :]


class LlamaBlock(nn.Module):
    """Pre-norm decoder block: RMSNorm, RoPE, causal GQA through ``tvm_attn.flash_attention``, SwiGLU MLP."""

    def __init__(self, dim: int = 256, heads: int = 4, kv_heads: int = 2, hidden: int = 512,
                 max_len: int = 2048) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        # tables sliced to the sequence length (TVM's ONNX frontend gives a Range of symbolic length a
        # fresh length that it cannot match to the sequence axis)
        cos, sin = rope_tables(max_len, self.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.attn_norm, self.mlp_norm = RMSNorm(dim), RMSNorm(dim)
        self.wq = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(heads * self.head_dim, dim, bias=False)
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.attn_norm(x)
        cos, sin = self.cos[:t], self.sin[:t]
        q = rope(self.wq(h).view(b, t, self.heads, self.head_dim), cos, sin)
        k = rope(self.wk(h).view(b, t, self.kv_heads, self.head_dim), cos, sin)
        v = self.wv(h).view(b, t, self.kv_heads, self.head_dim)
        a = tvm_attn.flash_attention(q, k, v, causal=True)  # [B, T, H, D]
        x = x + self.wo(a.reshape(b, t, -1))
        h = self.mlp_norm(x)
        return x + self.w_down(nn.functional.silu(self.w_gate(h)) * self.w_up(h))


@dataclass(frozen=True)
class Example:
    """A model, example inputs and the ``torch.export`` dynamic shapes of those inputs."""

    model: nn.Module
    args: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple[dict[int, Any], ...]


def llama_block(seed: int = 0) -> Example:
    torch.manual_seed(seed)
    model = LlamaBlock().eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=model.cos.shape[0])
    return Example(model, (torch.randn(2, 64, 256),), ({0: batch, 1: seq},))


EXAMPLES: dict[str, Callable[[], Example]] = {"llama-block": llama_block}
