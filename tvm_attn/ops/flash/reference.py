"""fp32 torch reference of flash-attention forward (docs/conventions.md).

    S[b, h, i, j] = scale · q[b, i, h, :] · k[b, j, h // (Hq/Hkv), :]        (visible pairs only)
    P = softmax_j(S);  out[b, i, h, :] = Σ_j P[b, h, i, j] v[b, j, h // (Hq/Hkv), :]
    lse[b, h, i] = log Σ_j exp(S[b, h, i, j])                                 (natural log)

Causal: query i sees key j iff j ≤ i + Tk − Tq (aligned to the bottom-right). A row that sees no key
gives out = 0 and lse = −inf.
"""
from __future__ import annotations

import math

import torch


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """[Tq, Tk] bool, True where query i may see key j (j ≤ i + Tk − Tq)."""
    i = torch.arange(tq, device=device)[:, None]
    j = torch.arange(tk, device=device)[None, :]
    return j <= i + (tk - tq)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  softmax_scale: float | None = None, upcast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense reference. q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] -> (out [B, Tq, Hq, D], lse [B, Hq, Tq]).

    ``upcast=False`` computes in the inputs' dtype (the low-precision reference of FlashAttention's
    error rule); ``out`` has the inputs' dtype then, otherwise fp32. ``lse`` is always fp32.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    tq, hq, d = q.shape[1], q.shape[2], q.shape[3]
    tk, hkv = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    k = k.repeat_interleave(hq // hkv, dim=2)
    v = v.repeat_interleave(hq // hkv, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k).float() * scale  # [B, Hq, Tq, Tk]
    if causal:
        s = s.masked_fill(~causal_mask(tq, tk, s.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [B, Hq, Tq]
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # rows with no visible key: all zero
    out = torch.einsum("bhij,bjhd->bihd", p.to(v.dtype), v)
    return (out if upcast else out.to(dtype)), lse


def attention_varlen_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, max_seqlen_q: int | None = None,
                         max_seqlen_k: int | None = None, *, causal: bool = False,
                         softmax_scale: float | None = None, upcast: bool = True):
    """Packed reference. q [total_q, Hq, D], k/v [total_k, Hkv, D], cu_seqlens [N + 1] ->
    (out [total_q, Hq, D], lse [Hq, total_q]); each sequence is attended on its own."""
    outs, lses = [], []
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for n in range(len(cq) - 1):
        o, l = attention_ref(q[None, cq[n]:cq[n + 1]], k[None, ck[n]:ck[n + 1]], v[None, ck[n]:ck[n + 1]],
                             causal=causal, softmax_scale=softmax_scale, upcast=upcast)
        outs.append(o[0])
        lses.append(l[0])
    return torch.cat(outs, 0), torch.cat(lses, 1)
