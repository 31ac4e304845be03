"""Public functions of the linear-attention family (fla-like): argument checks that name the bad
argument, then the torch ops. Semantics: docs/conventions.md ("Linear attention") and ``reference.py``.

Family identities are thin wrappers here: ``retnet`` is ``simple_gla`` with a constant per-head decay,
``mamba2_ssd`` maps the Mamba-2 SSD recurrence onto ``simple_gla``.
"""
from __future__ import annotations

import math

import torch

from ...api import _check_finite, _check_tensor, check_cu_seqlens, check_like_q  # the house argument checks
from .kinds import FORMS, OP_KINDS
from .torch_ops import OPS

CHUNK_SIZES = (16, 32, 64, 128)
# head dims with compiled kernels: CUDA chunk kernels keep their tiles in shared memory
HEAD_DIMS = {"cuda": (64, 128), "cpu": (16, 32, 64, 128, 256)}
MAX_MINI_BATCH = 128

Result = tuple[torch.Tensor, torch.Tensor | None]


def _check_qkv(q, k, v) -> None:
    _check_tensor("q", q, 4, "[B, T, H, K]")
    _check_tensor("k", k, 4, "[B, T, H, K]")
    _check_tensor("v", v, 4, "[B, T, H, V]")
    check_like_q(q, k=k, v=v)
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [B, T, H, K] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape [B, T, H, V] with q's B, T, H = {tuple(q.shape[:3])}, "
                         f"got {tuple(v.shape)}")
    if q.shape[0] == 0 or q.shape[1] == 0 or q.shape[2] == 0:
        raise ValueError(f"empty input: q has shape {tuple(q.shape)} (B, T and H must be >= 1)")
    dims = HEAD_DIMS[q.device.type]
    for name, d in (("q", q.shape[-1]), ("v", v.shape[-1])):
        if d not in dims:
            raise ValueError(f"head dim {d} of {name} is not supported on {q.device.type}; supported: {dims}")


def _check_per_token(name: str, t, q: torch.Tensor, shape: tuple[int, ...], dims: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {dims} = {shape}, got {tuple(t.shape)}")


def _check_options(op: str, q, v, *, form, scale, initial_state, output_final_state, cu_seqlens,
                   chunk_size, chunk_name: str = "chunk_size") -> float:
    """Check the keyword options shared by every op; returns the scale."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "parallel" and OP_KINDS[op][1] != "add":
        raise ValueError(f"form='parallel' exists only for the non-delta ops; {op} takes 'chunk' or 'recurrent'")
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {type(output_final_state).__name__}")
    if form == "parallel" and (initial_state is not None or output_final_state):
        raise ValueError("form='parallel' keeps no state: initial_state must be None and output_final_state False")
    if chunk_name == "chunk_size":
        if chunk_size not in CHUNK_SIZES or isinstance(chunk_size, bool):
            raise ValueError(f"chunk_size must be one of {CHUNK_SIZES}, got {chunk_size!r}")
    else:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_MINI_BATCH:
            raise ValueError(f"{chunk_name} must be an int in [1, {MAX_MINI_BATCH}], got {chunk_size!r}")
        if q.device.type == "cuda" and form == "chunk" and chunk_size % 16:
            raise ValueError(f"{chunk_name} must be a multiple of 16 for the CUDA chunk form, got {chunk_size}")
    b, t, h, kd = q.shape
    n = b
    if cu_seqlens is not None:
        check_cu_seqlens("cu_seqlens", cu_seqlens, q.device)
        if b != 1:
            raise ValueError(f"with cu_seqlens the batch size B must be 1 (sequences packed along T), got B = {b}")
        if cu_seqlens.device.type == "cpu":  # free to check here; on CUDA it would be a host synchronisation
            cu = cu_seqlens.tolist()
            if cu[0] != 0 or cu[-1] != t or any(a > c for a, c in zip(cu, cu[1:])):
                raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end at T = {t}, got {cu}")
        n = cu_seqlens.shape[0] - 1
    if initial_state is not None:
        state_shape = (n, h, kd, v.shape[-1])
        if not isinstance(initial_state, torch.Tensor):
            raise TypeError(f"initial_state must be a torch.Tensor, got {type(initial_state).__name__}")
        if not initial_state.is_floating_point():
            raise TypeError(f"initial_state must be a floating-point tensor, got {initial_state.dtype}")
        if initial_state.device != q.device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {q.device}")
        if tuple(initial_state.shape) != state_shape:
            raise ValueError(f"initial_state must have shape [N, H, K, V] = {state_shape}, "
                             f"got {tuple(initial_state.shape)}")
    if scale is None:
        return 1.0 / math.sqrt(kd)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float or None, got {scale!r}")
    return float(scale)


def _call(op: str, q, k, v, g, beta, *, form, scale, initial_state, output_final_state, cu_seqlens,
          chunk_size, chunk_name: str = "chunk_size") -> Result:
    """Check every argument of ``op`` (the per-token tensors its (gate, rule) kind takes), then run it."""
    _check_qkv(q, k, v)
    gate, rule = OP_KINDS[op]
    if gate == "vector":
        _check_per_token("g", g, q, tuple(q.shape), "[B, T, H, K]")
    elif gate == "scalar":
        _check_per_token("g", g, q, tuple(q.shape[:3]), "[B, T, H]")
    if rule != "add":
        _check_per_token("eta" if rule == "ttt" else "beta", beta, q, tuple(q.shape[:3]), "[B, T, H]")
    s = _check_options(op, q, v, form=form, scale=scale, initial_state=initial_state,
                       output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size,
                       chunk_name=chunk_name)
    per_token = {"g": g, "eta" if rule == "ttt" else "beta": beta, "initial_state": initial_state}
    _check_finite(q=q, k=k, v=v, **{name: t for name, t in per_token.items() if t is not None})
    o, ht = OPS[op](q, k, v, g, beta, initial_state, cu_seqlens, form, s, chunk_size)
    return o, (ht if output_final_state else None)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, form: str = "chunk",
                     scale: float | None = None, initial_state: torch.Tensor | None = None,
                     output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
                     chunk_size: int = 64) -> Result:
    """Linear attention without gates: S_t = S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; one dtype (CUDA: fp16/bf16; CPU: also fp32), contiguous.
        form: ``"chunk"`` (chunks of ``chunk_size`` tokens: quadratic inside, state across),
            ``"recurrent"`` (token by token; T = 1 is the decode step) or ``"parallel"`` (quadratic, no state).
        scale: output scale, default K^-1/2.
        initial_state: ``[N, H, K, V]`` (N = B, or the number of sequences with ``cu_seqlens``), any float dtype.
        output_final_state: also return the state after the last token (fp32 ``[N, H, K, V]``).
        cu_seqlens: int32 ``[N + 1]`` for packed sequences (B must be 1); each sequence has its own state.
        chunk_size: 16, 32, 64 or 128 (the chunk form's tile; the result does not depend on it).

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state or None)``. Conventions: docs/conventions.md.
    """
    return _call("linear_attention", q, k, v, None, None, form=form, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, *, form: str = "chunk",
               scale: float | None = None, initial_state: torch.Tensor | None = None,
               output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
               chunk_size: int = 64) -> Result:
    """Scalar-gated linear attention: S_t = exp(g_t) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

    ``g``: ``[B, T, H]`` log decay (≤ 0), one per token and head; read in fp32. RetNet (``retnet``),
    Lightning Attention's decay and Mamba-2's SSD (``mamba2_ssd``) are this op. Other arguments and
    the result: as in ``linear_attention``.
    """
    return _call("simple_gla", q, k, v, g, None, form=form, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, *, form: str = "chunk",
        scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
        cu_seqlens: torch.Tensor | None = None, chunk_size: int = 64) -> Result:
    """Gated linear attention (GLA): S_t = diag(exp(g_t)) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

    ``g``: ``[B, T, H, K]`` log decay (≤ 0) per key channel; read in fp32. Other arguments and the
    result: as in ``linear_attention``.
    """
    return _call("gla", q, k, v, g, None, form=form, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *, form: str = "chunk",
               scale: float | None = None, initial_state: torch.Tensor | None = None,
               output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
               chunk_size: int = 64) -> Result:
    """DeltaNet: S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

    ``beta``: ``[B, T, H]`` writing strength (usually in (0, 1); keys usually L2-normalised); read in
    fp32. Forms: ``"chunk"`` (WY/UT-transform chunks) and ``"recurrent"``. Other arguments and the
    result: as in ``linear_attention``. Equals ``gated_delta_rule`` with g = 0.
    """
    return _call("delta_rule", q, k, v, None, beta, form=form, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
                     form: str = "chunk", scale: float | None = None, initial_state: torch.Tensor | None = None,
                     output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
                     chunk_size: int = 64) -> Result:
    """Gated DeltaNet: S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

    ``g``: ``[B, T, H]`` log decay (≤ 0); ``beta``: ``[B, T, H]``; both read in fp32. Forms:
    ``"chunk"`` and ``"recurrent"``. Other arguments and the result: as in ``linear_attention``.
    """
    return _call("gated_delta_rule", q, k, v, g, beta, form=form, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def ttt_linear(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor, *, mini_batch_size: int = 16,
               form: str = "chunk", scale: float | None = None, initial_state: torch.Tensor | None = None,
               output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None) -> Result:
    """TTT-Linear (Sun et al. 2024): the state is the weight W [K, V] of a linear inner model trained
    at test time by mini-batch gradient descent on ½‖Wᵀ k_s − v_s‖² with learning rate ``eta``.

    Tokens form mini-batches of ``mini_batch_size`` from each sequence's first token. Inside a
    mini-batch every gradient is taken at the weights W₀ the mini-batch started from, and token t sees
    the steps of its mini-batch up to itself (the dual form of the paper):
    W_t = W₀ − Σ_{s ≤ t} η_s k_s (W₀ᵀ k_s − v_s)ᵀ, o_t = scale · W_tᵀ q_t (scale default K^-1/2;
    the paper's f(q) = Wᵀq is ``scale=1.0``). With ``mini_batch_size=1`` it is ``delta_rule`` with
    beta = eta.

    Args:
        eta: ``[B, T, H]`` per-token learning rate; read in fp32.
        mini_batch_size: 1 to 128 (the CUDA chunk form needs a multiple of 16). A semantic parameter:
            the chunk form uses the mini-batch as its chunk. Chaining calls through
            ``initial_state`` equals one call when every call but the last covers whole mini-batches.
        form: ``"chunk"`` or ``"recurrent"``; other arguments and the result as in ``linear_attention``.
    """
    return _call("ttt_linear", q, k, v, None, eta, form=form, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=mini_batch_size,
                 chunk_name="mini_batch_size")


# ------------------------------------------------------------------------------------------------
# family identities
# ------------------------------------------------------------------------------------------------

def retnet_log_decay(num_heads: int) -> torch.Tensor:
    """RetNet's per-head decay in log space: log(1 − 2^(−5−h)), h = 0 .. H−1 (fp32 [H])."""
    return torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(num_heads, dtype=torch.float64))).float()


def retnet(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, form: str = "chunk", scale: float | None = None,
           initial_state: torch.Tensor | None = None, output_final_state: bool = False,
           cu_seqlens: torch.Tensor | None = None, chunk_size: int = 64) -> Result:
    """RetNet retention = ``simple_gla`` with the constant decay γ_h = 1 − 2^(−5−h) of head h."""
    _check_qkv(q, k, v)
    b, t, h, _ = q.shape
    g = retnet_log_decay(h).to(q.device)[None, None, :].expand(b, t, h)
    return simple_gla(q, k, v, g, form=form, scale=scale, initial_state=initial_state,
                      output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def mamba2_ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
               D: torch.Tensor | None = None, form: str = "chunk", initial_state: torch.Tensor | None = None,
               output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
               chunk_size: int = 64) -> Result:
    """Mamba-2 SSD on ``simple_gla``:  h_t = exp(Δ_t A) h_{t-1} + B_t (Δ_t x_t)ᵀ,  y_t = h_tᵀ C_t + D x_t.

    The map: q = C, k = B, v = Δ·x, g = Δ·A, scale = 1; the SSM state h [N, P] is the state [K, V].

    Args:
        x: ``[b, T, H, P]`` (the op's dtype); dt: ``[b, T, H]`` the step Δ (after softplus);
        A: ``[H]`` (negative); B, C: ``[b, T, G, N]`` with H a multiple of G (head h reads group
            h // (H / G)), x's dtype; D: ``[H]`` skip, optional.
        initial_state / final state: ``[b or N, H, N, P]`` (fp32 out).
    """
    for name, t in (("x", x), ("B", B), ("C", C)):
        _check_tensor(name, t, 4, "[b, T, H, P]" if name == "x" else "[b, T, G, N]")
    b, t, h, _ = x.shape
    if B.shape != C.shape or B.shape[:2] != x.shape[:2] or B.shape[2] == 0 or h % B.shape[2]:
        raise ValueError(f"B and C must have shape [b, T, G, N] with x's b, T and G dividing H = {h}; "
                         f"got B {tuple(B.shape)}, C {tuple(C.shape)}")
    _check_per_token("dt", dt, x, (b, t, h), "[b, T, H]")
    _check_per_token("A", A, x, (h,), "[H]")
    rep = h // B.shape[2]
    q = C.repeat_interleave(rep, dim=2).contiguous()
    k = B.repeat_interleave(rep, dim=2).contiguous()
    dtf = dt.float()
    v = (x.float() * dtf[..., None]).to(x.dtype)
    g = dtf * A.float()
    y, state = simple_gla(q, k, v, g, form=form, scale=1.0, initial_state=initial_state,
                          output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    if D is not None:
        _check_per_token("D", D, x, (h,), "[H]")
        y = (y.float() + D.float()[:, None] * x.float()).to(x.dtype)
    return y, state


__all__ = ["linear_attention", "simple_gla", "gla", "delta_rule", "gated_delta_rule", "ttt_linear", "retnet",
           "mamba2_ssd", "retnet_log_decay", "FORMS", "CHUNK_SIZES", "HEAD_DIMS"]
