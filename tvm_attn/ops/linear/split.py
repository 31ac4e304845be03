"""The chunk form split into kernels launched in sequence (the structure of flash-linear-attention's
chunk forward), for the scalar-gated and ungated ops: ``linear_attention``, ``simple_gla``,
``delta_rule``, ``gated_delta_rule``.

    prep    (delta rules) one tile per (chunk, head), all chunks in parallel:
            Tm = (I + strict_tril(diag(β) (K Kᵀ) ⊙ Γ))⁻¹,  W = Tm (β eᵇ ⊙ K),  U = Tm (β ⊙ V)
    state   one tile per (sequence, head, value tile[, key tile for the add rule]) walks the chunks in
            order doing only the state recurrence; stores each chunk's incoming state h[c]:
                add:    S' = e^{b_C} S + (K ⊙ e^{b_C − b})ᵀ V
                delta:  V' = U − W S   (stored: the output kernel's values)
                        S' = e^{b_C} S + (K ⊙ e^{b_C − b})ᵀ V'
    output  one tile per (chunk, head, value tile), all in parallel:
                O = scale · ([eᵇ ⊙ Q | (Q Kᵀ) ⊙ Γ] [h[c]; V or V'])

``b`` is the chunk-local cumulative log decay (``gc``, fp32, computed by the caller: the sum of g from
the chunk's first row to row i), ``b_C`` its value at the chunk's last row (rows past a sequence's end
repeat the last valid row's value), Γ[i, j] = exp(b_i − b_j) for j ≤ i and 0 above. The math is the
single-kernel chunk form's (``compute.chunk``), reassociated.

Scratch (allocated by the caller, in the operand dtype ``odt``): ``w`` [B, T, H, K] and ``u``
[B, T, H, V] (prep → state), ``vn`` [B, T, H, V] (V', state → output), ``h`` [NTt, H, K, V] (state →
output; chunk c of sequence n is row ``n · ceil(T / C) + c`` when dense, ``chunk_offsets[n] + c`` when
varlen). Varlen kernels walk a per-sequence chunk index space: ``chunk_offsets`` [N + 1] (state) and
``chunk_indices`` [NTt, 2] = (sequence, chunk of the sequence) (prep, output), computed by the caller.

Every row read is clamped into its own sequence (``bos + min(row, len − 1)``) and rows past the end
are zeroed where they are operands, so scratch rows past a sequence's end are never read as data; no
kernel writes past a sequence's end.
"""
from __future__ import annotations

from ..._tvm import T, tirx
from .compute import F32, LinearStatic, _axes, _keep_params

PARTS = ("prep", "state", "output")


def _row(x, bsel, bos, r, seq_len, *cols):
    """``x`` at row ``r`` of the sequence starting at ``bos``, clamped inside it (always in bounds; the
    caller masks rows past the end)."""
    return x[bsel, bos + T.min(r, seq_len - 1), *cols]


def _masked_row(x, odt: str, bsel, bos, r, seq_len, *cols):
    """``_row`` in ``odt``, zero past the sequence's end (the padding rows of a chunk)."""
    return T.Cast(odt, T.Select(r < seq_len, _row(x, bsel, bos, r, seq_len, *cols), tirx.const(0, x.dtype)))


def signature(st: LinearStatic, part: str) -> list[str]:
    """Argument names of ``part``'s kernel, in order."""
    gated, delta, varlen = st.gate != "none", st.rule == "delta", st.varlen
    gc = ["gc"] if gated else []
    if part == "prep":
        return ["k", "v", *gc, "beta", *(["cu_seqlens", "chunk_indices"] if varlen else []), "w", "u"]
    if part == "state":
        return (["k", *(["w", "u"] if delta else ["v"]), *gc, "h0",
                 *(["cu_seqlens", "chunk_offsets"] if varlen else []), "h", *(["vn"] if delta else []), "ht"])
    return ["q", "k", "vn" if delta else "v", *gc, "h",
            *(["cu_seqlens", "chunk_indices"] if varlen else []), "o", "scale"]


def _check(st: LinearStatic) -> None:
    assert st.gate in ("none", "scalar") and st.rule in ("add", "delta"), f"no split chunk form for {st.op}"


def _chunk_grid(st: LinearStatic, C: int, QB, Tv, NTt):
    """Extent of the parallel chunk axis: every chunk of every sequence."""
    return NTt if st.varlen else QB * T.ceildiv(Tv, C)


# ------------------------------------------------------------------------------------------------
# prep (delta rules): W and U of every chunk, in parallel
# ------------------------------------------------------------------------------------------------

def prep(st: LinearStatic, *, chunk_size: int, op_dtype: str | None = None, smem: str = "global",
         acc: str = "global", solve: str = "global"):
    """Build the PrimFunc ``main`` of the delta rules' per-chunk preparation (W, U)."""
    _check(st)
    assert st.rule == "delta"
    K, V, C, dt = st.key_dim, st.value_dim, chunk_size, st.dtype
    odt = op_dtype or dt
    gated, varlen = st.gate != "none", st.varlen
    QB, NS, Tv, Hv, NCv = _axes(st)
    NTt = tirx.Var("NTt", "int32")
    zero = tirx.const(0.0, F32)
    one = tirx.const(1.0, F32)

    def ediff(b_s, i, j):
        return T.exp(b_s[i] - b_s[j]) if gated else one

    def edec(b_s, i):
        return T.exp(b_s[i]) if gated else one

    @T.macro
    def body(k, v, gc, beta, w, u, bsel, vh, vc, bos, seq_len):
        Ka_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)  # K, the A operand of K Kᵀ
        K_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)  # K, the B operand
        Kb_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)  # β eᵇ ⊙ K
        Vb_s = T.sblock_alloc_buffer((C, V), odt, scope=smem)  # β ⊙ V
        Tl_s = T.sblock_alloc_buffer((C, C), odt, scope=smem)
        A_s = T.sblock_alloc_buffer((C, C), F32, scope=acc)  # K Kᵀ, then L in place
        Tm_s = T.sblock_alloc_buffer((C, C), F32, scope=solve)
        W_s = T.sblock_alloc_buffer((C, K), F32, scope=acc)
        U_s = T.sblock_alloc_buffer((C, V), F32, scope=acc)
        b_s = T.sblock_alloc_buffer((C,) if gated else (1,), F32, scope=acc)
        beta_s = T.sblock_alloc_buffer((C,), F32, scope=acc)
        for i, kk in T.grid(C, K):
            with T.sblock("Ka_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                Ka_s[vi, vk] = _masked_row(k, odt, bsel, bos, vc * C + vi, seq_len, vh, vk)
        for i, kk in T.grid(C, K):
            with T.sblock("K_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                K_s[vi, vk] = _masked_row(k, odt, bsel, bos, vc * C + vi, seq_len, vh, vk)
        if gated:
            for i in T.serial(C):
                with T.sblock("b_load"):
                    vi = T.axis.remap("S", [i])
                    b_s[vi] = _row(gc, bsel, bos, vc * C + vi, seq_len, vh)
        for i in T.serial(C):
            with T.sblock("beta_load"):
                vi = T.axis.remap("S", [i])
                beta_s[vi] = T.Select(vc * C + vi < seq_len, _row(beta, bsel, bos, vc * C + vi, seq_len, vh), zero)
        with T.sblock("A_scope"):
            for i, j, kk in T.grid(C, C, K):
                with T.sblock("A_gemm"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                    with T.init():
                        A_s[vi, vj] = zero
                    A_s[vi, vj] = A_s[vi, vj] + T.Cast(F32, Ka_s[vi, vk]) * T.Cast(F32, K_s[vj, vk])
        with T.sblock("L_scope"):
            for i, j, r in T.grid(C, C, 1):
                with T.sblock("L_mask"):  # L over K Kᵀ in place, as an extent-1 reduction (bindable)
                    vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                    with T.init():
                        A_s[vi, vj] = T.Select(vj < vi, beta_s[vi] * A_s[vi, vj] * ediff(b_s, vi, vj), zero)
                    A_s[vi, vj] = A_s[vi, vj]
        for m, i, l in T.grid(C, C, C):
            with T.sblock("T_solve"):  # Tm = (I + L)⁻¹, column m by forward substitution over rows i
                vi, vm, vl = T.axis.remap("SSR", [i, m, l])
                T.reads(A_s[vi, 0:C], Tm_s[0:C, vm])
                T.writes(Tm_s[vi, vm])
                with T.init():
                    Tm_s[vi, vm] = T.Select(vi == vm, one, zero)
                Tm_s[vi, vm] = Tm_s[vi, vm] - T.Select(vl < vi, A_s[vi, vl] * Tm_s[vl, vm], zero)
        for i, j in T.grid(C, C):
            with T.sblock("T_cast"):
                vi, vj = T.axis.remap("SS", [i, j])
                Tl_s[vi, vj] = T.Cast(odt, Tm_s[vi, vj])
        for i, kk in T.grid(C, K):
            with T.sblock("Kb_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                Kb_s[vi, vk] = T.Cast(odt, beta_s[vi] * edec(b_s, vi) * T.Cast(
                    F32, _row(k, bsel, bos, vc * C + vi, seq_len, vh, vk)))
        for i, j in T.grid(C, V):
            with T.sblock("Vb_load"):
                vi, vj = T.axis.remap("SS", [i, j])
                Vb_s[vi, vj] = T.Cast(odt, beta_s[vi] * T.Cast(F32, _row(v, bsel, bos, vc * C + vi, seq_len, vh, vj)))
        with T.sblock("W_scope"):
            for i, j, l in T.grid(C, K, C):
                with T.sblock("W_gemm"):
                    vi, vj, vl = T.axis.remap("SSR", [i, j, l])
                    with T.init():
                        W_s[vi, vj] = zero
                    W_s[vi, vj] = W_s[vi, vj] + T.Cast(F32, Tl_s[vi, vl]) * T.Cast(F32, Kb_s[vl, vj])
        with T.sblock("U_scope"):
            for i, j, l in T.grid(C, V, C):
                with T.sblock("U_gemm"):
                    vi, vj, vl = T.axis.remap("SSR", [i, j, l])
                    with T.init():
                        U_s[vi, vj] = zero
                    U_s[vi, vj] = U_s[vi, vj] + T.Cast(F32, Tl_s[vi, vl]) * T.Cast(F32, Vb_s[vl, vj])
        for i, kk in T.grid(C, K):
            with T.sblock("W_store"):
                vi, vk = T.axis.remap("SS", [i, kk])
                if vc * C + vi < seq_len:
                    w[bsel, bos + vc * C + vi, vh, vk] = T.Cast(odt, W_s[vi, vk])
        for i, j in T.grid(C, V):
            with T.sblock("U_store"):
                vi, vj = T.axis.remap("SS", [i, j])
                if vc * C + vi < seq_len:
                    u[bsel, bos + vc * C + vi, vh, vj] = T.Cast(odt, U_s[vi, vj])
        with T.sblock("keep_alive"):
            # reads every chunk buffer last, so none is freed early: TVM 0.27's dynamic shared-memory
            # planner (MergeSharedMemoryAllocations) re-lays out a reused buffer when it later coalesces
            # freed blocks, which put A_s (K Kᵀ) on β eᵇ K and Tl_s on β V while both were live (W = 0,
            # U = Tl on CUDA). Tl_s is dead here; the write only keeps the read from being removed.
            Tl_s[0, 0] = T.Cast(odt, T.Cast(F32, Ka_s[0, 0]) + T.Cast(F32, K_s[0, 0]) + T.Cast(F32, Kb_s[0, 0])
                                + T.Cast(F32, Vb_s[0, 0]) + A_s[0, 0] + W_s[0, 0] + U_s[0, 0] + beta_s[0] + (b_s[0] if gated else zero))

    @T.prim_func(s_tir=True)
    def main(k: T.Buffer((QB, Tv, Hv, K), dt), v: T.Buffer((QB, Tv, Hv, V), dt),
             gc: T.Buffer((QB, Tv, Hv) if gated else (1,), F32), beta: T.Buffer((QB, Tv, Hv), F32),
             cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"),
             chunk_indices: T.Buffer((NTt, 2) if varlen else (1, 2), "int32"),
             w: T.Buffer((QB, Tv, Hv, K), odt), u: T.Buffer((QB, Tv, Hv, V), odt)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for ci, h in T.grid(_chunk_grid(st, C, QB, Tv, NTt), Hv):
            with T.sblock("tile"):
                vci, vh = T.axis.remap("SS", [ci, h])
                T.reads(*([k[0:QB, 0:Tv, vh, 0:K], v[0:QB, 0:Tv, vh, 0:V], beta[0:QB, 0:Tv, vh]]
                          + ([gc[0:QB, 0:Tv, vh]] if gated else [])
                          + ([cu_seqlens[0:NCv], chunk_indices[vci, 0:2]] if varlen else [])))
                T.writes(w[0:QB, 0:Tv, vh, 0:K], u[0:QB, 0:Tv, vh, 0:V])
                if varlen:
                    seq: T.let = chunk_indices[vci, 0]
                    bos: T.let = cu_seqlens[seq]
                    body(k, v, gc, beta, w, u, 0, vh, chunk_indices[vci, 1], bos, cu_seqlens[seq + 1] - bos)
                else:
                    nt: T.let = T.ceildiv(Tv, C)
                    body(k, v, gc, beta, w, u, vci // nt, vh, vci % nt, 0, Tv)

    return _keep_params(main, signature(st, "prep"))


# ------------------------------------------------------------------------------------------------
# state: the chunk recurrence only, per (sequence, head, value tile[, key tile])
# ------------------------------------------------------------------------------------------------

def _clamped(bos, r, seq_len):
    """Row ``r`` of the sequence starting at ``bos``, clamped inside it; an empty sequence reads a row
    next to it (always in bounds: every use of such a row is masked)."""
    return T.max(T.min(bos + r, bos + seq_len - 1), 0)


def state(st: LinearStatic, *, chunk_size: int, block_v: int, block_k: int | None = None,
          op_dtype: str | None = None, smem: str = "global", acc: str = "global", frag: str = "global",
          min_chunks: int = 1):
    """Build the PrimFunc ``main`` of the state pass. ``block_k`` (add rule only) tiles the state's rows:
    its rows never mix there, so key tiles are independent. ``frag``: the scope of the fp32 state and of
    the decayed values (register fragments, "warp", on CUDA). The state lives in ``frag`` across the
    whole chunk loop; per chunk:

        h[c] = S (rounded to ``odt``)
        delta:  V' = U − W·odt(S)  (fp32; stored rounded as ``vn``)
        Vd = odt(V ⊙ d)  with d_l = e^{b_C − b_l} for rows inside the sequence, 0 past its end
        S = e^{b_C} S + Kᵀ Vd

    The chunk tiles are plain copies of clamped rows (the mask is in d), so CUDA can stage them
    asynchronously one chunk ahead. The chunk loop runs at least ``min_chunks`` times (a software
    pipeline needs a trip count it can prove); the extra iteration of an empty sequence adds nothing
    and stores nothing."""
    _check(st)
    K, V, C, BV, dt = st.key_dim, st.value_dim, chunk_size, block_v, st.dtype
    BK = block_k or K
    odt = op_dtype or dt
    gated, delta, varlen = st.gate != "none", st.rule == "delta", st.varlen
    assert V % BV == 0 and K % BK == 0 and (BK == K or not delta)
    QB, NS, Tv, Hv, NCv = _axes(st)
    NTt = tirx.Var("NTt", "int32")
    zero = tirx.const(0.0, F32)
    one = tirx.const(1.0, F32)

    @T.macro
    def seq(k, v, w, u, gc, h0, h, vn, ht, bsel, vn_, vh, vv, vk0, bos, seq_len, cbase):
        S_w = T.sblock_alloc_buffer((BK, BV), F32, scope=frag)  # the state's (key tile, value tile)
        K_s = T.sblock_alloc_buffer((C, BK), odt, scope=smem)
        V_s = T.sblock_alloc_buffer((C, BV), odt, scope=smem)  # V (add) or U (delta)
        W_s = T.sblock_alloc_buffer((C, K) if delta else (1, 1), odt, scope=smem)
        b_s = T.sblock_alloc_buffer((C,) if gated else (1,), F32, scope=acc)
        Y_s = T.sblock_alloc_buffer((K, BV) if delta else (1, 1), odt, scope=smem)  # odt(S), W S's B operand
        WS_w = T.sblock_alloc_buffer((C, BV) if delta else (1, 1), F32, scope=frag)
        Vn_s = T.sblock_alloc_buffer((C, BV) if delta else (1, 1), F32, scope=acc)  # V' in fp32
        # decayed, masked values, the update's B operand: stored [value column, row] (see mma_intrins)
        Vd_w = T.sblock_alloc_buffer((BV, C), odt, scope=frag)
        for kk, j in T.grid(BK, BV):
            with T.sblock("S_init"):
                vk, vj = T.axis.remap("SS", [kk, j])
                S_w[vk, vj] = h0[vn_, vh, vk0 * BK + vk, vv * BV + vj]
        n_c: T.let = T.ceildiv(seq_len, C)  # a bound var: the pipeline pass compares it symbolically
        for c in T.serial(T.max(n_c, min_chunks)):
            for i, kk in T.grid(C, BK):
                with T.sblock("K_load"):
                    vc, vi, vk = T.axis.remap("SSS", [c, i, kk])
                    K_s[vi, vk] = k[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk0 * BK + vk]
            if delta:
                for i, kk in T.grid(C, K):
                    with T.sblock("W_load"):
                        vc, vi, vk = T.axis.remap("SSS", [c, i, kk])
                        W_s[vi, vk] = w[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk]
            for i, j in T.grid(C, BV):
                with T.sblock("V_load"):
                    vc, vi, vj = T.axis.remap("SSS", [c, i, j])
                    if delta:
                        V_s[vi, vj] = u[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vv * BV + vj]
                    else:
                        V_s[vi, vj] = v[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vv * BV + vj]
            if gated:
                for i in T.serial(C):
                    with T.sblock("b_load"):
                        vc, vi = T.axis.remap("SS", [c, i])
                        b_s[vi] = gc[bsel, _clamped(bos, vc * C + vi, seq_len), vh]
            with T.sblock("h_store_scope"):  # the chunk index bound by a scope block: the inner block keeps
                vc = T.axis.remap("S", [c])  # only its data axes (the fragment layout maps them)
                for kk, j in T.grid(BK, BV):
                    with T.sblock("h_store"):
                        vk, vj = T.axis.remap("SS", [kk, j])
                        if vc < n_c:
                            h[cbase + vc, vh, vk0 * BK + vk, vv * BV + vj] = T.Cast(odt, S_w[vk, vj])
            if delta:
                with T.sblock("S_cast_scope"):  # (scope blocks: the fragment layout maps a block's own loops)
                    for kk, j in T.grid(K, BV):
                        with T.sblock("S_cast"):
                            vk, vj = T.axis.remap("SS", [kk, j])
                            Y_s[vk, vj] = T.Cast(odt, S_w[vk, vj])
                with T.sblock("WS_scope"):
                    for i, j, kk in T.grid(C, BV, K):
                        with T.sblock("WS_gemm"):
                            vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                            with T.init():
                                WS_w[vi, vj] = zero
                            WS_w[vi, vj] = WS_w[vi, vj] + T.Cast(F32, W_s[vi, vk]) * T.Cast(F32, Y_s[vk, vj])
                # V' = U − W S in the registers, then to shared memory: a pass that read and wrote shared
                # memory would get a barrier per element (TVM pools the shared buffers before placing them)
                with T.sblock("Vn_form_scope"):
                    for i, j, r in T.grid(C, BV, 1):
                        with T.sblock("Vn_form"):  # in place, written as an extent-1 reduction (bindable)
                            vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                            with T.init():
                                WS_w[vi, vj] = T.Cast(F32, V_s[vi, vj]) - WS_w[vi, vj]
                            WS_w[vi, vj] = WS_w[vi, vj]
                with T.sblock("Vn_calc_scope"):
                    for i, j in T.grid(C, BV):
                        with T.sblock("Vn_calc"):
                            vi, vj = T.axis.remap("SS", [i, j])
                            Vn_s[vi, vj] = WS_w[vi, vj]
                with T.sblock("vn_store_scope"):
                    vc = T.axis.remap("S", [c])
                    for i, j in T.grid(C, BV):
                        with T.sblock("vn_store"):
                            vi, vj = T.axis.remap("SS", [i, j])
                            if vc * C + vi < seq_len:
                                vn[bsel, bos + vc * C + vi, vh, vv * BV + vj] = T.Cast(odt, Vn_s[vi, vj])
            with T.sblock("V_decay_scope"):
                vc = T.axis.remap("S", [c])
                for j, i in T.grid(BV, C):
                    with T.sblock("V_decay"):
                        vj, vi = T.axis.remap("SS", [j, i])
                        Vd_w[vj, vi] = T.Cast(odt, T.Select(
                            vc * C + vi < seq_len,
                            (Vn_s[vi, vj] if delta else T.Cast(F32, V_s[vi, vj]))
                            * (T.exp(b_s[C - 1] - b_s[vi]) if gated else one), zero))
            if gated:
                with T.sblock("S_decay_scope"):
                    vc = T.axis.remap("S", [c])
                    for kk, j, r in T.grid(BK, BV, 1):
                        with T.sblock("S_decay"):  # in place, written as an extent-1 reduction (bindable)
                            vk, vj, vr = T.axis.remap("SSR", [kk, j, r])
                            with T.init():
                                S_w[vk, vj] = S_w[vk, vj] * T.Select(vc < n_c, T.exp(b_s[C - 1]), one)
                            S_w[vk, vj] = S_w[vk, vj]
            with T.sblock("S_scope"):
                for kk, j, l in T.grid(BK, BV, C):
                    with T.sblock("S_gemm"):  # S += Kᵀ Vd, accumulated onto the state
                        vk, vj, vl = T.axis.remap("SSR", [kk, j, l])
                        with T.init():
                            S_w[vk, vj] = S_w[vk, vj]
                        S_w[vk, vj] = S_w[vk, vj] + T.Cast(F32, K_s[vl, vk]) * T.Cast(F32, Vd_w[vj, vl])
        for kk, j in T.grid(BK, BV):
            with T.sblock("ht_store"):
                vk, vj = T.axis.remap("SS", [kk, j])
                ht[vn_, vh, vk0 * BK + vk, vv * BV + vj] = S_w[vk, vj]

    @T.prim_func(s_tir=True)
    def main(k: T.Buffer((QB, Tv, Hv, K), dt), v: T.Buffer((QB, Tv, Hv, V), dt),
             w: T.Buffer((QB, Tv, Hv, K) if delta else (1,), odt), u: T.Buffer((QB, Tv, Hv, V) if delta else (1,), odt),
             gc: T.Buffer((QB, Tv, Hv) if gated else (1,), F32), h0: T.Buffer((NS, Hv, K, V), F32),
             cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"),
             chunk_offsets: T.Buffer((NCv,) if varlen else (1,), "int32"),
             h: T.Buffer((NTt, Hv, K, V), odt), vn: T.Buffer((QB, Tv, Hv, V) if delta else (1,), odt),
             ht: T.Buffer((NS, Hv, K, V), F32)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for n, hh, jv, jk in T.grid(NS, Hv, V // BV, K // BK):
            with T.sblock("tile"):
                vn_, vh, vv, vk0 = T.axis.remap("SSSS", [n, hh, jv, jk])
                T.reads(*([k[0:QB, 0:Tv, vh, 0:K], h0[vn_, vh, 0:K, 0:V]]
                          + ([w[0:QB, 0:Tv, vh, 0:K], u[0:QB, 0:Tv, vh, 0:V]] if delta else [v[0:QB, 0:Tv, vh, 0:V]])
                          + ([gc[0:QB, 0:Tv, vh]] if gated else [])
                          + ([cu_seqlens[0:NCv], chunk_offsets[0:NCv]] if varlen else [])))
                T.writes(*([h[0:NTt, vh, 0:K, 0:V], ht[vn_, vh, 0:K, 0:V]]
                           + ([vn[0:QB, 0:Tv, vh, 0:V]] if delta else [])))
                if varlen:
                    bos: T.let = cu_seqlens[vn_]
                    seq(k, v, w, u, gc, h0, h, vn, ht, 0, vn_, vh, vv, vk0, bos, cu_seqlens[vn_ + 1] - bos,
                        chunk_offsets[vn_])
                else:
                    seq(k, v, w, u, gc, h0, h, vn, ht, vn_, vn_, vh, vv, vk0, 0, Tv, vn_ * T.ceildiv(Tv, C))

    return _keep_params(main, signature(st, "state"))


# ------------------------------------------------------------------------------------------------
# output: every (chunk, head, value tile) in parallel
# ------------------------------------------------------------------------------------------------

def output(st: LinearStatic, *, chunk_size: int, block_v: int, op_dtype: str | None = None,
           smem: str = "global", acc: str = "global", frag: str = "global"):
    """Build the PrimFunc ``main`` of the output pass (values: ``v`` for the add rule, V' for delta):

        O = e^{b} ⊙ (Q h[c]) + odt((Q Kᵀ) ⊙ Γ) V,   stored as scale · O

    with the products in ``frag`` (register fragments on CUDA). Tiles are plain copies of clamped rows:
    Γ is 0 above the diagonal, so a row inside the sequence never sees a row past its end, and rows
    past the end are not stored."""
    _check(st)
    K, V, C, BV, dt = st.key_dim, st.value_dim, chunk_size, block_v, st.dtype
    odt = op_dtype or dt
    gated, delta, varlen = st.gate != "none", st.rule == "delta", st.varlen
    assert V % BV == 0
    QB, NS, Tv, Hv, NCv = _axes(st)
    NTt = tirx.Var("NTt", "int32")
    zero = tirx.const(0.0, F32)

    @T.macro
    def body(q, k, v, vn, gc, h, o, scale, bsel, vh, vv, vc, bos, seq_len, cidx):
        Q_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)
        K_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)
        H_s = T.sblock_alloc_buffer((K, BV), odt, scope=smem)
        V_s = T.sblock_alloc_buffer((C, BV), odt, scope=smem)
        b_s = T.sblock_alloc_buffer((C,) if gated else (1,), F32, scope=acc)
        O_w = T.sblock_alloc_buffer((C, BV), F32, scope=frag)
        A_w = T.sblock_alloc_buffer((C, C), F32, scope=frag)
        P_w = T.sblock_alloc_buffer((C, C), odt, scope=frag)
        for i, kk in T.grid(C, K):
            with T.sblock("Q_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                Q_s[vi, vk] = q[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk]
        for i, kk in T.grid(C, K):
            with T.sblock("K_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                K_s[vi, vk] = k[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk]
        for kk, j in T.grid(K, BV):
            with T.sblock("H_load"):
                vk, vj = T.axis.remap("SS", [kk, j])
                H_s[vk, vj] = h[cidx, vh, vk, vv * BV + vj]
        for i, j in T.grid(C, BV):
            with T.sblock("V_load"):
                vi, vj = T.axis.remap("SS", [i, j])
                if delta:
                    V_s[vi, vj] = vn[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vv * BV + vj]
                else:
                    V_s[vi, vj] = v[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vv * BV + vj]
        if gated:
            for i in T.serial(C):
                with T.sblock("b_load"):
                    vi = T.axis.remap("S", [i])
                    b_s[vi] = gc[bsel, _clamped(bos, vc * C + vi, seq_len), vh]
        with T.sblock("OH_scope"):
            for i, j, kk in T.grid(C, BV, K):
                with T.sblock("OH_gemm"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                    with T.init():
                        O_w[vi, vj] = zero
                    O_w[vi, vj] = O_w[vi, vj] + T.Cast(F32, Q_s[vi, vk]) * T.Cast(F32, H_s[vk, vj])
        if gated:
            with T.sblock("O_decay_scope"):
                for i, j, r in T.grid(C, BV, 1):
                    with T.sblock("O_decay"):  # in place, written as an extent-1 reduction (bindable)
                        vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                        with T.init():
                            O_w[vi, vj] = O_w[vi, vj] * T.exp(b_s[vi])
                        O_w[vi, vj] = O_w[vi, vj]
        with T.sblock("A_scope"):
            for i, j, kk in T.grid(C, C, K):
                with T.sblock("A_gemm"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                    with T.init():
                        A_w[vi, vj] = zero
                    A_w[vi, vj] = A_w[vi, vj] + T.Cast(F32, Q_s[vi, vk]) * T.Cast(F32, K_s[vj, vk])
        for i, j in T.grid(C, C):
            with T.sblock("P_mask"):
                vi, vj = T.axis.remap("SS", [i, j])
                if gated:
                    P_w[vi, vj] = T.Cast(odt, T.Select(vj <= vi, A_w[vi, vj] * T.exp(b_s[vi] - b_s[vj]), zero))
                else:
                    P_w[vi, vj] = T.Cast(odt, T.Select(vj <= vi, A_w[vi, vj], zero))
        with T.sblock("O_scope"):
            for i, j, l in T.grid(C, BV, C):
                with T.sblock("O_gemm"):
                    vi, vj, vl = T.axis.remap("SSR", [i, j, l])
                    with T.init():
                        O_w[vi, vj] = O_w[vi, vj]
                    O_w[vi, vj] = O_w[vi, vj] + T.Cast(F32, P_w[vi, vl]) * T.Cast(F32, V_s[vl, vj])
        for i, j in T.grid(C, BV):
            with T.sblock("O_store"):
                vi, vj = T.axis.remap("SS", [i, j])
                if vc * C + vi < seq_len:
                    o[bsel, bos + vc * C + vi, vh, vv * BV + vj] = T.Cast(dt, O_w[vi, vj] * scale)

    @T.prim_func(s_tir=True)
    def main(q: T.Buffer((QB, Tv, Hv, K), dt), k: T.Buffer((QB, Tv, Hv, K), dt),
             v: T.Buffer((QB, Tv, Hv, V), dt), vn: T.Buffer((QB, Tv, Hv, V), odt),
             gc: T.Buffer((QB, Tv, Hv) if gated else (1,), F32), h: T.Buffer((NTt, Hv, K, V), odt),
             cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"),
             chunk_indices: T.Buffer((NTt, 2) if varlen else (1, 2), "int32"),
             o: T.Buffer((QB, Tv, Hv, V), dt), scale: T.float32):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for ci, hh, jv in T.grid(_chunk_grid(st, C, QB, Tv, NTt), Hv, V // BV):
            with T.sblock("tile"):
                vci, vh, vv = T.axis.remap("SSS", [ci, hh, jv])
                T.reads(*([q[0:QB, 0:Tv, vh, 0:K], k[0:QB, 0:Tv, vh, 0:K], h[0:NTt, vh, 0:K, 0:V]]
                          + ([vn[0:QB, 0:Tv, vh, 0:V]] if delta else [v[0:QB, 0:Tv, vh, 0:V]])
                          + ([gc[0:QB, 0:Tv, vh]] if gated else [])
                          + ([cu_seqlens[0:NCv], chunk_indices[vci, 0:2]] if varlen else [])))
                T.writes(o[0:QB, 0:Tv, vh, vv * BV:vv * BV + BV])
                if varlen:
                    seq: T.let = chunk_indices[vci, 0]
                    bos: T.let = cu_seqlens[seq]
                    body(q, k, v, vn, gc, h, o, scale, 0, vh, vv, chunk_indices[vci, 1], bos,
                         cu_seqlens[seq + 1] - bos, vci)
                else:
                    nt: T.let = T.ceildiv(Tv, C)
                    body(q, k, v, vn, gc, h, o, scale, vci // nt, vh, vv, vci % nt, 0, Tv, vci)

    return _keep_params(main, signature(st, "output"))
