"""The split chunk form of ``gla`` (a log decay per token, head and key channel): the state and output
kernels of ``split.py``'s structure, with the decay inside the key sums.

    state   one tile per (sequence, head, value tile, key tile) walks the chunks in order, the state S
            [K, V] (not transposed: the decay scales its rows) in registers; stores each chunk's
            incoming state h[c] [K, V]:
                S' = diag(e^{b_C}) S + Kdᵀ V,   Kd[l, k] = k_lk e^{b_Ck − b_lk}  (0 past the end)
    output  one tile per (chunk, head, value tile), all in parallel:
                O = scale · ((Q ⊙ eᵇ) h[c] + odt(A) V),   A[i, j] = Σ_k q_ik k_jk e^{b_ik − b_jk}  (j ≤ i)

``b`` [.., K] is the chunk-local cumulative log decay (``gc``, fp32, computed by the caller), ``b_C`` its
last row. Every exponent above is ≤ 0 (b does not increase along a chunk), and so are those of the
intra-chunk scores, computed in 16-row sub-chunks (flash-linear-attention's scheme): the query rows of
sub-chunk s against the keys of earlier sub-chunks on tensor cores, with sub-chunk s's first row r as
the reference,

    A[i, j] = Σ_k (q_ik e^{b_ik − b_rk}) (k_jk e^{b_rk − b_jk})          (j < r ≤ i: both factors ≤ 1)

(the keys scaled once per query sub-chunk: ``Kr`` holds C//16 copies), and the 16x16 diagonal blocks
element-wise in fp32 with the exact e^{b_ik − b_jk} (no growing factor, whatever the decay).

Layouts, scratch and varlen indexing are ``split.py``'s, except that h is [NTt, H, K, V] here. The
chunk tiles are plain copies of clamped rows; rows past a sequence's end are masked where they would
matter (Kd is 0 there; A is 0 above the diagonal) and never stored.
"""
from __future__ import annotations

from ..._tvm import T, tirx
from .compute import F32, LinearStatic, _axes, _keep_params
from .split import LOG2E, _clamped, _exp, _initial, _output_main, _output_tail, signature

SUB = 16  # rows of a sub-chunk (an mma tile)


def _check(st: LinearStatic) -> None:
    assert st.gate == "vector" and st.rule == "add", f"no gla split kernel for {st.op}"


def state(st: LinearStatic, *, chunk_size: int, block_v: int, block_k: int | None = None,
          op_dtype: str | None = None, smem: str = "global", acc: str = "global", frag: str = "global",
          solve: str = "global", min_chunks: int = 1):
    """Build the PrimFunc ``main`` of gla's state pass: per (sequence, head, value tile, key tile) the
    fp32 state tile S [BK, BV] lives in ``frag`` across the chunk loop; per chunk:

        Y = odt(S);  h[c] = Y   (a plain copy)
        Kdᵀ[k, l] = odt(k_lk e^{b_Ck − b_lk})  for rows inside the sequence, 0 past its end
        S = diag(e^{b_C}) S + Kdᵀ V       (the decay 1 on the extra iterations past the last chunk)

    ``min_chunks``: the chunk loop's least trip count (a software pipeline of s stages needs s)."""
    _check(st)
    K, V, C, BV, dt = st.key_dim, st.value_dim, chunk_size, block_v, st.dtype
    BK = block_k or K
    odt = op_dtype or dt
    varlen = st.varlen
    assert V % BV == 0 and K % BK == 0
    QB, NS, Tv, Hv, NCv = _axes(st)
    NTt = tirx.Var("NTt", "int32")
    N0 = tirx.Var("N0", "int32")  # h0's sequences: NS, or 0 (no initial state: ``split._initial``)
    zero = tirx.const(0.0, F32)
    one = tirx.const(1.0, F32)

    @T.macro
    def seq(k, v, gc, h0, h, ht, bsel, vn_, vh, vv, vk0, bos, seq_len, cbase):
        S_w = T.sblock_alloc_buffer((BK, BV), F32, scope=frag)  # the state tile, in registers
        K_s = T.sblock_alloc_buffer((C, BK), odt, scope=smem)
        V_s = T.sblock_alloc_buffer((C, BV), odt, scope=smem)
        G_s = T.sblock_alloc_buffer((C, BK), F32, scope=smem)  # b of the key tile's channels
        Y_s = T.sblock_alloc_buffer((BK, BV), odt, scope=smem)  # odt(S): h[c]
        Kd_w = T.sblock_alloc_buffer((BK, C), odt, scope=frag)  # decayed, masked keys, transposed
        for kk, j in T.grid(BK, BV):
            with T.sblock("S_init"):
                vk, vj = T.axis.remap("SS", [kk, j])
                S_w[vk, vj] = _initial(h0, vn_, vh, vk0 * BK + vk, vv * BV + vj)
        n_c: T.let = T.ceildiv(seq_len, C)  # a bound var: the pipeline pass compares it symbolically
        for c in T.serial(T.max(n_c, min_chunks)):
            for i, kk in T.grid(C, BK):
                with T.sblock("K_load"):
                    vc, vi, vk = T.axis.remap("SSS", [c, i, kk])
                    K_s[vi, vk] = k[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk0 * BK + vk]
            for i, j in T.grid(C, BV):
                with T.sblock("V_load"):
                    vc, vi, vj = T.axis.remap("SSS", [c, i, j])
                    V_s[vi, vj] = v[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vv * BV + vj]
            for i, kk in T.grid(C, BK):
                with T.sblock("G_load"):
                    vc, vi, vk = T.axis.remap("SSS", [c, i, kk])
                    G_s[vi, vk] = gc[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk0 * BK + vk]
            with T.sblock("S_cast_scope"):  # (scope blocks: the fragment layout maps a block's own loops)
                for kk, j in T.grid(BK, BV):
                    with T.sblock("S_cast"):
                        vk, vj = T.axis.remap("SS", [kk, j])
                        Y_s[vk, vj] = T.Cast(odt, S_w[vk, vj])
            for kk, j in T.grid(BK, BV):
                with T.sblock("h_store"):
                    vc, vk, vj = T.axis.remap("SSS", [c, kk, j])
                    if vc < n_c:
                        h[cbase + vc, vh, vk0 * BK + vk, vv * BV + vj] = Y_s[vk, vj]
            with T.sblock("Kd_calc_scope"):
                vc = T.axis.remap("S", [c])
                for kk, i in T.grid(BK, C):
                    with T.sblock("Kd_calc"):
                        vk, vi = T.axis.remap("SS", [kk, i])
                        Kd_w[vk, vi] = T.Cast(odt, T.Select(
                            vc * C + vi < seq_len,
                            T.Cast(F32, K_s[vi, vk]) * _exp(G_s[C - 1, vk] - G_s[vi, vk]), zero))
            with T.sblock("S_decay_scope"):
                vc = T.axis.remap("S", [c])
                for kk, j, r in T.grid(BK, BV, 1):
                    with T.sblock("S_decay"):  # in place, written as an extent-1 reduction (bindable)
                        vk, vj, vr = T.axis.remap("SSR", [kk, j, r])
                        with T.init():
                            S_w[vk, vj] = S_w[vk, vj] * T.Select(vc < n_c, _exp(G_s[C - 1, vk]), one)
                        S_w[vk, vj] = S_w[vk, vj]
            with T.sblock("S_scope"):
                for kk, j, l in T.grid(BK, BV, C):
                    with T.sblock("S_gemm"):  # S += Kdᵀ V, accumulated onto the state
                        vk, vj, vl = T.axis.remap("SSR", [kk, j, l])
                        with T.init():
                            S_w[vk, vj] = S_w[vk, vj]
                        S_w[vk, vj] = S_w[vk, vj] + T.Cast(F32, Kd_w[vk, vl]) * T.Cast(F32, V_s[vl, vj])
        for kk, j in T.grid(BK, BV):
            with T.sblock("ht_store"):
                vk, vj = T.axis.remap("SS", [kk, j])
                ht[vn_, vh, vk0 * BK + vk, vv * BV + vj] = S_w[vk, vj]

    @T.prim_func(s_tir=True)
    def main(k: T.Buffer((QB, Tv, Hv, K), dt), v: T.Buffer((QB, Tv, Hv, V), dt),
             gc: T.Buffer((QB, Tv, Hv, K), F32), h0: T.Buffer((N0, Hv, K, V), F32),
             cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"),
             chunk_offsets: T.Buffer((NCv,) if varlen else (1,), "int32"),
             h: T.Buffer((NTt, Hv, K, V), odt), ht: T.Buffer((NS, Hv, K, V), F32)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for n, hh, jv, jk in T.grid(NS, Hv, V // BV, K // BK):
            with T.sblock("tile"):
                vn_, vh, vv, vk0 = T.axis.remap("SSSS", [n, hh, jv, jk])
                T.reads(*([k[0:QB, 0:Tv, vh, 0:K], v[0:QB, 0:Tv, vh, 0:V], gc[0:QB, 0:Tv, vh, 0:K],
                           h0[vn_, vh, 0:K, 0:V]]
                          + ([cu_seqlens[0:NCv], chunk_offsets[0:NCv]] if varlen else [])))
                T.writes(h[0:NTt, vh, 0:K, 0:V], ht[vn_, vh, 0:K, 0:V])
                if varlen:
                    bos: T.let = cu_seqlens[vn_]
                    seq(k, v, gc, h0, h, ht, 0, vn_, vh, vv, vk0, bos, cu_seqlens[vn_ + 1] - bos, chunk_offsets[vn_])
                else:
                    seq(k, v, gc, h0, h, ht, vn_, vn_, vh, vv, vk0, 0, Tv, vn_ * T.ceildiv(Tv, C))

    return _keep_params(main, signature(st, "state"))


def output(st: LinearStatic, *, chunk_size: int, block_v: int, op_dtype: str | None = None,
           smem: str = "global", acc: str = "global", frag: str = "global", solve: str = "global"):
    """Build the PrimFunc ``main`` of gla's output pass, per (chunk, head, value tile):

        Qg = odt(Q ⊙ eᵇ);  O = Qg h[c]                                    (tensor cores)
        Qr = odt(Q ⊙ e^{b − b_r(i)}),  Kr[s] = odt(K ⊙ e^{b_{16s} − b}) (rows < 16s, unset elsewhere)
        A[i, j] = Σ_k Qr[i, k] Kr[i // 16][j, k]                          (tensor cores; j < r(i))
        A[i, j] = Σ_k q_ik k_jk e^{b_ik − b_jk}   on the diagonal 16x16 blocks, j ≤ i (fp32, exact)
        O += odt(A ⊙ [j ≤ i]) V;  stored as scale · O

    (r(i) = 16 (i // 16), the first row of i's sub-chunk). Only the rows of Kr[s] that A's sub-chunks
    before s read are computed, 16 s of its C (96 of 4 x 64 at chunk 64); A's products over the others
    land in the diagonal blocks, which are computed afresh, and above them, where P is 0 (a select:
    whatever they hold); the diagonal blocks are a fragment of their own (``D_w``), merged into P as it
    is masked. The products stay in ``frag`` (registers on CUDA); the tile leaves through shared memory
    (``O_s``) as whole rows.

    In two phases, so that the shared tiles of the second reuse the first's memory (the planner reuses
    by liveness): Q, K, the gates and h[c] loaded, Qg h, Qr and the diagonal blocks; then the scaled
    keys and V, A, P V. At K = V = 128, chunk 64, 102 KiB instead of 187 with every tile live at once:
    two CTAs per SM of an H100/H200."""
    _check(st)
    K, V, C, BV, dt = st.key_dim, st.value_dim, chunk_size, block_v, st.dtype
    odt = op_dtype or dt
    assert V % BV == 0 and C % SUB == 0
    NB = C // SUB
    # the rows of Kr the scores read, packed: 16 s for sub-chunk s (with one sub-chunk none: C rows that
    # only the diagonal block's products read, which it computes afresh)
    NR = SUB * NB * (NB - 1) // 2 if NB > 1 else C

    def first(s):  # sub-chunk s's first packed row (0 for s = 0 and 1)
        return SUB * s * (s - 1) // 2

    def sub_of(r):  # the sub-chunk packed row r scales for
        if NB == 1:
            return tirx.const(0, "int32")
        return 1 + sum((T.Cast("int32", r >= first(s)) for s in range(2, NB)), tirx.const(0, "int32"))

    def row_of(r):  # the chunk row of packed row r
        return r - first(sub_of(r))

    zero = tirx.const(0.0, F32)
    log2e = tirx.const(LOG2E, F32)
    tail = _output_tail(st, chunk_size=C, block_v=BV)

    @T.macro
    def body(q, k, v, vn, gc, h, o, scale, bsel, vh, vv, vc, bos, seq_len, cidx):  # (vn: the delta rules')
        Q_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)
        K_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)
        G_s = T.sblock_alloc_buffer((C, K), F32, scope=smem)  # b log2 e: its exponentials are exp2's
        H_s = T.sblock_alloc_buffer((K, BV), odt, scope=smem)  # h[c]
        V_s = T.sblock_alloc_buffer((C, BV), odt, scope=smem)
        Kr_s = T.sblock_alloc_buffer((NB * C, K), odt, scope=smem)  # the keys scaled for each query sub-chunk
        Kr_kl = T.sblock_alloc_buffer((NR, K), dt, scope=solve)  # its operands: k, b, the reference b
        Kr_bl = T.sblock_alloc_buffer((NR, K), F32, scope=solve)
        Kr_rl = T.sblock_alloc_buffer((NR, K), F32, scope=solve)
        Kr_v = T.sblock_alloc_buffer((NR, K), odt, scope=solve)  # the scaled keys, on their way to Kr_s
        Qg_w = T.sblock_alloc_buffer((C, K), odt, scope=frag)
        Qr_w = T.sblock_alloc_buffer((C, K), odt, scope=frag)
        O_w = T.sblock_alloc_buffer((C, BV), F32, scope=frag)
        A_w = T.sblock_alloc_buffer((C, C), F32, scope=frag)
        D_w = T.sblock_alloc_buffer((C, SUB), F32, scope=frag)  # A's diagonal 16x16 blocks, exact
        P_w = T.sblock_alloc_buffer((C, C), odt, scope=frag)
        O_s = T.sblock_alloc_buffer((C, BV), dt, scope=smem)  # the output tile, stored as 16-byte vectors
        for i, kk in T.grid(C, K):
            with T.sblock("Q_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                Q_s[vi, vk] = q[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk]
        for i, kk in T.grid(C, K):
            with T.sblock("K_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                K_s[vi, vk] = k[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk]
        for i, kk in T.grid(C, K):
            with T.sblock("G_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                G_s[vi, vk] = gc[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk] * log2e
        for kk, j in T.grid(K, BV):
            with T.sblock("H_load"):
                vk, vj = T.axis.remap("SS", [kk, j])
                H_s[vk, vj] = h[cidx, vh, vk, vv * BV + vj]
        with T.sblock("Qg_calc_scope"):
            for i, kk in T.grid(C, K):
                with T.sblock("Qg_calc"):
                    vi, vk = T.axis.remap("SS", [i, kk])
                    Qg_w[vi, vk] = T.Cast(odt, T.Cast(F32, Q_s[vi, vk]) * T.exp2(G_s[vi, vk]))
        with T.sblock("OH_scope"):
            for i, j, kk in T.grid(C, BV, K):
                with T.sblock("OH_gemm"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                    with T.init():
                        O_w[vi, vj] = zero
                    O_w[vi, vj] = O_w[vi, vj] + T.Cast(F32, Qg_w[vi, vk]) * T.Cast(F32, H_s[vk, vj])
        with T.sblock("Qr_calc_scope"):
            for i, kk in T.grid(C, K):
                with T.sblock("Qr_calc"):
                    vi, vk = T.axis.remap("SS", [i, kk])
                    Qr_w[vi, vk] = T.Cast(odt, T.Cast(F32, Q_s[vi, vk])
                                          * T.exp2(G_s[vi, vk] - G_s[vi // SUB * SUB, vk]))
        with T.sblock("A_diag_scope"):
            for s, i, j, kk in T.grid(NB, SUB, SUB, K):
                # the diagonal blocks in a fragment of their own (P takes them from it, not from A's
                # product, whose values there are discarded), exact decay. Summed for
                # every (i, j) of a block but its upper-right 8x8 quadrant (a condition on the register,
                # not the lane), without a per-element branch (a lane's row and column operands are then
                # loaded once per step for all its elements); terms above the diagonal are dropped by P_mask
                with T.sblock("A_diag"):
                    vs, vi, vj, vk = T.axis.remap("SSSR", [s, i, j, kk])
                    with T.init():
                        D_w[vs * SUB + vi, vj] = zero
                    D_w[vs * SUB + vi, vj] = D_w[vs * SUB + vi, vj] + T.if_then_else(
                        vj // 8 <= vi // 8,
                        T.Cast(F32, Q_s[vs * SUB + vi, vk]) * T.Cast(F32, K_s[vs * SUB + vj, vk])
                        * T.exp2(G_s[vs * SUB + vi, vk] - G_s[vs * SUB + vj, vk]), zero)
        # packed row r: key row_of(r) scaled for query sub-chunk sub_of(r), Kr_s's row sub_of(r) C + row_of(r).
        # Its operands are read from global memory (as the tiles are) into ``solve`` (registers on CUDA):
        # computed from the shared tiles into shared memory, every step would need a barrier
        for r, kk in T.grid(NR, K):
            with T.sblock("Kr_k"):
                vr, vk = T.axis.remap("SS", [r, kk])
                Kr_kl[vr, vk] = k[bsel, _clamped(bos, vc * C + row_of(vr), seq_len), vh, vk]
        for r, kk in T.grid(NR, K):
            with T.sblock("Kr_b"):
                vr, vk = T.axis.remap("SS", [r, kk])
                Kr_bl[vr, vk] = gc[bsel, _clamped(bos, vc * C + row_of(vr), seq_len), vh, vk]
        for r, kk in T.grid(NR, K):
            with T.sblock("Kr_ref"):
                vr, vk = T.axis.remap("SS", [r, kk])
                Kr_rl[vr, vk] = gc[bsel, _clamped(bos, vc * C + sub_of(vr) * SUB, seq_len), vh, vk]
        for r, kk in T.grid(NR, K):
            with T.sblock("Kr_calc"):
                vr, vk = T.axis.remap("SS", [r, kk])
                Kr_v[vr, vk] = T.Cast(odt, T.Cast(F32, Kr_kl[vr, vk]) * _exp(Kr_rl[vr, vk] - Kr_bl[vr, vk]))
        for r, kk in T.grid(NR, K):
            with T.sblock("Kr_store"):  # (its region stated: the row it writes is not affine in r)
                vr, vk = T.axis.remap("SS", [r, kk])
                T.reads(Kr_v[vr, vk])
                T.writes(Kr_s[0:NB * C, vk])
                Kr_s[sub_of(vr) * C + row_of(vr), vk] = Kr_v[vr, vk]
        for i, j in T.grid(C, BV):
            with T.sblock("V_load"):
                vi, vj = T.axis.remap("SS", [i, j])
                V_s[vi, vj] = v[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vv * BV + vj]
        with T.sblock("A_scope"):
            for i, j, kk in T.grid(C, C, K):
                with T.sblock("A_gemm"):  # the sub-chunks before i's, keys scaled for i's sub-chunk
                    vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                    with T.init():
                        A_w[vi, vj] = zero
                    A_w[vi, vj] = A_w[vi, vj] + T.Cast(F32, Qr_w[vi, vk]) * T.Cast(F32, Kr_s[vi // SUB * C + vj, vk])
        for i, j in T.grid(C, C):
            with T.sblock("P_mask"):
                vi, vj = T.axis.remap("SS", [i, j])
                P_w[vi, vj] = T.Cast(odt, T.Select(vj <= vi, T.Select(vj // SUB == vi // SUB, D_w[vi, vj % SUB],
                                                                      A_w[vi, vj]), zero))
        tail(P_w, V_s, O_w, O_s, o, scale, bsel, vh, vv, vc, bos, seq_len)

    return _keep_params(_output_main(st, chunk_size=C, block_v=BV, op_dtype=odt, body=body), signature(st, "output"))
