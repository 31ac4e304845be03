"""fp32 torch references of the linear-attention family: the plain token-by-token recurrence
(docs/conventions.md, "Linear attention").

Every op keeps a state S [K, V] per (sequence, head) and emits

    o_t = scale · S_tᵀ q_t                                  (scale default K^-1/2)

after updating the state with token t:

    linear_attention   S_t = S_{t-1} + k_t v_tᵀ
    simple_gla         S_t = exp(g_t) S_{t-1} + k_t v_tᵀ                      g [B, T, H]
    gla                S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ                g [B, T, H, K]
    delta_rule         S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ        beta [B, T, H]
    gated_delta_rule   S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
    ttt_linear         S_t = S_{m(t)} − Σ_{s = m(t)+1}^{t} η_s k_s (S_{m(t)}ᵀ k_s − v_s)ᵀ   eta [B, T, H]
                       where m(t) is the last token of the previous mini-batch (mini-batches of
                       ``mini_batch_size`` tokens, counted from each sequence's first token) and
                       S_{m(t)} the state at that point (the initial state for the first mini-batch)

Shapes: q, k [B, T, H, K]; v [B, T, H, V]; initial/final state [B, H, K, V] (varlen: [N, H, K, V]);
o [B, T, H, V]. Varlen: B = 1 and sequence n is tokens ``cu_seqlens[n] : cu_seqlens[n + 1]``, each with
its own state. Gates are in log space. The state and the output are fp32 (``upcast=False``: computed in
the inputs' dtype instead, the low-precision reference of the accuracy rule).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: Callable[..., torch.Tensor],
         per_token: dict[str, torch.Tensor], *, scale: float | None, initial_state: torch.Tensor | None,
         output_final_state: bool, cu_seqlens: torch.Tensor | None, upcast: bool,
         step_args: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drive ``step`` over every token; ``per_token`` tensors are [B, T, H, ...]. The batch rows of a
    dense input advance together; packed sequences one after the other, each from its own state."""
    dtype = q.dtype
    work = torch.float32 if upcast else dtype
    b, t, h, kdim = q.shape
    vdim = v.shape[-1]
    scale = 1.0 / math.sqrt(kdim) if scale is None else scale
    q, k, v = q.to(work), k.to(work), v.to(work)
    per_token = {name: x.to(work) for name, x in per_token.items()}
    if cu_seqlens is None:
        spans = [(slice(0, b), 0, t, slice(0, b))]  # (batch rows, first token, end, state rows)
    else:
        cu = cu_seqlens.tolist()
        spans = [(slice(0, 1), cu[n], cu[n + 1], slice(n, n + 1)) for n in range(len(cu) - 1)]
    o = torch.zeros(v.shape, dtype=work, device=q.device)
    finals = []
    for rows, start, end, srows in spans:
        s = torch.zeros(rows.stop - rows.start, h, kdim, vdim, dtype=work, device=q.device)  # [b, H, K, V]
        if initial_state is not None:
            s = initial_state[srows].to(work).clone()
        for i in range(start, end):
            tok = {name: x[rows, i] for name, x in per_token.items()}
            s = step(s, q[rows, i], k[rows, i], v[rows, i], i - start, **tok, **(step_args or {}))
            o[rows, i] = scale * _kts(s, q[rows, i])
        finals.append(s)
    final = torch.cat(finals).float() if output_final_state else None
    return (o.float() if upcast else o), final


def _outer(k_t: torch.Tensor, u_t: torch.Tensor) -> torch.Tensor:
    return k_t[..., :, None] * u_t[..., None, :]  # [b, H, K, V]


def _kts(s: torch.Tensor, k_t: torch.Tensor) -> torch.Tensor:
    return (s * k_t[..., :, None]).sum(-2)  # Sᵀ k: [b, H, V]


def linear_attention_ref(q, k, v, *, scale=None, initial_state=None, output_final_state=False,
                         cu_seqlens=None, upcast=True):
    """S_t = S_{t-1} + k_t v_tᵀ;  o_t = scale · S_tᵀ q_t."""
    def step(s, q_t, k_t, v_t, t):
        return s + _outer(k_t, v_t)
    return _run(q, k, v, step, {}, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, upcast=upcast)


def simple_gla_ref(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False,
                   cu_seqlens=None, upcast=True):
    """S_t = exp(g_t) S_{t-1} + k_t v_tᵀ (g [B, T, H], one log decay per head and token)."""
    def step(s, q_t, k_t, v_t, t, g):
        return torch.exp(g)[..., None, None] * s + _outer(k_t, v_t)
    return _run(q, k, v, step, {"g": g}, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, upcast=upcast)


def gla_ref(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
            upcast=True):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ (g [B, T, H, K], one log decay per key channel)."""
    def step(s, q_t, k_t, v_t, t, g):
        return torch.exp(g)[..., None] * s + _outer(k_t, v_t)
    return _run(q, k, v, step, {"g": g}, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, upcast=upcast)


def delta_rule_ref(q, k, v, beta, *, scale=None, initial_state=None, output_final_state=False,
                   cu_seqlens=None, upcast=True):
    """S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ = S_{t-1} + k_t (β_t (v_t − S_{t-1}ᵀ k_t))ᵀ."""
    def step(s, q_t, k_t, v_t, t, beta):
        return s + _outer(k_t, beta[..., None] * (v_t - _kts(s, k_t)))
    return _run(q, k, v, step, {"beta": beta}, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, upcast=upcast)


def gated_delta_rule_ref(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                         cu_seqlens=None, upcast=True):
    """S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ (g, beta [B, T, H])."""
    def step(s, q_t, k_t, v_t, t, g, beta):
        s = torch.exp(g)[..., None, None] * s
        return s + _outer(k_t, beta[..., None] * (v_t - _kts(s, k_t)))
    return _run(q, k, v, step, {"g": g, "beta": beta}, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, upcast=upcast)


def ttt_linear_ref(q, k, v, eta, *, mini_batch_size=16, scale=None, initial_state=None,
                   output_final_state=False, cu_seqlens=None, upcast=True):
    """TTT-Linear: inner model x ↦ Wᵀ x, W [K, V], loss ½‖Wᵀ k_s − v_s‖², learning rate η_s [B, T, H].

    Within a mini-batch every gradient is taken at the weights W₀ the mini-batch started from, and
    token t sees the steps of the mini-batch's tokens up to and including itself:
    W_t = W₀ − Σ_{s ≤ t in the mini-batch} η_s k_s (W₀ᵀ k_s − v_s)ᵀ, o_t = scale · W_tᵀ q_t.
    """
    base = {}

    def step(s, q_t, k_t, v_t, t, eta, mb):
        if t % mb == 0:
            base["w0"] = s  # weights at the mini-batch start
        return s - _outer(k_t, eta[..., None] * (_kts(base["w0"], k_t) - v_t))
    return _run(q, k, v, step, {"eta": eta}, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, upcast=upcast,
                step_args={"mb": mini_batch_size})


REFERENCES = {
    "linear_attention": linear_attention_ref,
    "simple_gla": simple_gla_ref,
    "gla": gla_ref,
    "delta_rule": delta_rule_ref,
    "gated_delta_rule": gated_delta_rule_ref,
    "ttt_linear": ttt_linear_ref,
}
