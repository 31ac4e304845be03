"""Flash-attention forward as one TensorIR compute (online softmax, FA2 structure).

Semantics: docs/conventions.md. One PrimFunc per static specialisation (head dim, head ratio, dtype,
causal, dense or varlen, tile sizes); batch, heads and sequence lengths are symbolic, so one compiled
module serves every length.

Per (sequence, query head, query tile of BM rows) one ``tile`` block walks the visible key tiles of BN
keys: S = Q Kᵀ, running row max and sum, P = exp2(S·c − m·c), O = O·α + P V, with the row max kept in
raw score units (c = scale·log2 e is applied once per row), the mask applied only to key tiles that
straddle a sequence end or the causal diagonal, and O rescaled lazily (``RESCALE``). The row statistics are
``(BM, 4)`` buffers ``[row, quad lane]``: quad lane q owns the columns j with (j mod 8) div 2 == q, which is
where the mma.sync C fragment puts them, so on CUDA each lane keeps its partial max/sum in registers and
the 4-way reduction is a read of the other lanes' entries (lowered to shuffles). On the CPU the same
buffers are plain arrays.

Rows and keys past a sequence's end are read at a clamped index (always in bounds) and masked out of the
softmax; nothing is ever written past the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..._tvm import T, tirx

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
NEG = -1.0e30  # finite "minus infinity" for the running max: exp2(NEG - NEG) = 1, never NaN
# lazy rescaling: a row's reference max moves only when the true max passes it by more than this
# (log2 units), so P <= 2**RESCALE and most key tiles skip the O·α pass (exact: O, l and the final
# normalisation share the reference)
RESCALE = 8.0


@dataclass(frozen=True)
class FlashTiles:
    """Compute-level tile sizes (they shape buffers and loop extents, so they live in the compute)."""

    block_m: int = 128  # query rows per tile
    block_n: int = 64  # keys per kv tile
    # the key-tile loop runs at least this many times (tiles past the end are fully masked): a software
    # pipeline of s stages needs a trip count it can prove >= s, or it guards its prologue with a branch
    # the CUDA barrier pass refuses
    min_kv_tiles: int = 0


@dataclass(frozen=True)
class FlashStatic:
    """Static part of a flash forward specialisation."""

    head_dim: int
    group: int  # Hq / Hkv
    dtype: str  # float16 | bfloat16 | float32
    causal: bool
    varlen: bool


def flash_forward(st: FlashStatic, tiles: FlashTiles, *, smem: str = "global", warp: str = "global"):
    """Build the PrimFunc ``main``.

    Dense:  q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D], o [B, Tq, Hq, D], lse [B, Hq, Tq] (fp32), sm_scale.
    Varlen: q [1, total_q, Hq, D], k/v [1, total_k, Hkv, D], o like q, lse [1, Hq, total_q],
            cu_q / cu_k [N + 1] int32, max_seqlen_q, sm_scale.
    ``smem`` / ``warp`` are the storage scopes of the staged tiles and of the register fragments
    ("shared.dyn" / "warp" on CUDA, "global" for the CPU).
    """
    D, G, dt = st.head_dim, st.group, st.dtype
    BM, BN = tiles.block_m, tiles.block_n
    assert BN % 8 == 0 and BM % 16 == 0
    acc = "float32"
    pdt = dt  # dtype of P (the A operand of the second matmul)
    NJ8 = BN // 8
    zero = tirx.const(0.0, acc)
    neg = tirx.const(NEG, acc)
    ninf = tirx.const(-math.inf, acc)
    log2e = tirx.const(LOG2E, acc)
    ln2 = tirx.const(LN2, acc)
    rescale = tirx.const(RESCALE, acc)
    causal = st.causal

    Bv, Tq, Tk, Hq, Hkv = (tirx.Var(n, "int32") for n in ("B", "Tq", "Tk", "Hq", "Hkv"))
    NB = tirx.Var("NB", "int32")  # varlen: len(cu_seqlens) = N + 1

    def kv_tiles(q0, len_q, len_k):
        # number of key tiles any row of this query tile can see
        if causal:
            vis = T.min(len_k, q0 + BM + len_k - len_q)
            n = T.max(T.ceildiv(T.max(vis, 0), BN), 0)
        else:
            n = T.ceildiv(len_k, BN)
        return T.max(T.Select(q0 < len_q, n, 0), tiles.min_kv_tiles)

    def full_tiles(q0, len_q, len_k):
        # key tiles every row of the query tile sees in full: no mask needed on them
        if causal:
            return T.max(T.min(T.floordiv(q0 + len_k - len_q + 1, BN), T.floordiv(len_k, BN)), 0)
        return T.floordiv(len_k, BN)

    def visible(row, col, len_q, len_k):
        # causal: for a row inside the sequence (row < len_q) the diagonal bound already implies
        # col < len_k; rows past the end are computed on clamped data and never written
        if causal:
            return col <= row + len_k - len_q
        return col < len_k

    @T.macro
    def tile(q, k, v, o, lse, sm_scale, bsel, vh, vq, q_off, len_q, k_off, len_k, last_q, last_k):
        # one (sequence, query head, query tile); q0 = first row of the tile within its sequence.
        # Row maxima are kept in raw score units; c turns them into the exp2 domain.
        c = T.meta_var(sm_scale * log2e)
        Q_s = T.sblock_alloc_buffer((BM, D), dt, scope=smem)
        K_s = T.sblock_alloc_buffer((BN, D), dt, scope=smem)
        V_s = T.sblock_alloc_buffer((BN, D), dt, scope=smem)
        S_w = T.sblock_alloc_buffer((BM, BN), acc, scope=warp)
        P_w = T.sblock_alloc_buffer((BM, BN), pdt, scope=warp)
        O_w = T.sblock_alloc_buffer((BM, D), acc, scope=warp)
        pm = T.sblock_alloc_buffer((BM, 4), acc, scope=warp)
        m_w = T.sblock_alloc_buffer((BM, 4), acc, scope=warp)
        mh_w = T.sblock_alloc_buffer((BM, 4), acc, scope=warp)
        mn_w = T.sblock_alloc_buffer((BM, 4), acc, scope=warp)
        l_w = T.sblock_alloc_buffer((BM, 4), acc, scope=warp)
        lf = T.sblock_alloc_buffer((BM, 4), acc, scope=warp)
        for i, d in T.grid(BM, D):
            with T.sblock("Q_load"):
                vi, vd = T.axis.remap("SS", [i, d])
                Q_s[vi, vd] = q[bsel, T.min(q_off + vq * BM + vi, last_q), vh, vd]
        for i, qq in T.grid(BM, 4):
            with T.sblock("m_init"):
                vi, vqq = T.axis.remap("SS", [i, qq])
                m_w[vi, vqq] = neg
        for i, qq in T.grid(BM, 4):
            with T.sblock("l_init"):
                vi, vqq = T.axis.remap("SS", [i, qq])
                l_w[vi, vqq] = zero
        for i, d in T.grid(BM, D):
            with T.sblock("O_init"):
                vi, vd = T.axis.remap("SS", [i, d])
                O_w[vi, vd] = zero
        n_kv: T.let = kv_tiles(vq * BM, len_q, len_k)  # a bound var: the pipeline pass compares it symbolically
        n_full: T.let = full_tiles(vq * BM, len_q, len_k)
        for kt in T.serial(n_kv):
            for j, d in T.grid(BN, D):
                with T.sblock("K_load"):
                    vt, vj, vd = T.axis.remap("SSS", [kt, j, d])
                    K_s[vj, vd] = k[bsel, T.min(k_off + vt * BN + vj, last_k), vh // G, vd]
            for j, d in T.grid(BN, D):
                with T.sblock("V_load"):
                    vt, vj, vd = T.axis.remap("SSS", [kt, j, d])
                    V_s[vj, vd] = v[bsel, T.min(k_off + vt * BN + vj, last_k), vh // G, vd]
            with T.sblock("S_scope"):
                for i, j, kk in T.grid(BM, BN, D):
                    with T.sblock("S_gemm"):
                        vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                        with T.init():
                            S_w[vi, vj] = zero
                        S_w[vi, vj] = S_w[vi, vj] + T.Cast(acc, Q_s[vi, vk]) * T.Cast(acc, K_s[vj, vk])
            # only the tiles that straddle a sequence end or the causal diagonal pay for the mask:
            # their hidden scores become -inf, so exp2 gives exactly 0 and a row that sees no key
            # keeps the finite NEG as its max (sm_scale > 0 is checked by the API)
            with T.sblock("S_mask_scope"):
                vt = T.axis.remap("S", [kt])
                if vt >= n_full:
                    # an in-place update, written as a reduction over one element (see O_rescale)
                    for i, j, r in T.grid(BM, BN, 1):
                        with T.sblock("S_mask"):
                            vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                            with T.init():
                                S_w[vi, vj] = T.Select(visible(vq * BM + vi, vt * BN + vj, len_q, len_k),
                                                       S_w[vi, vj], ninf)
                            S_w[vi, vj] = S_w[vi, vj]
            with T.sblock("row_pmax_scope"):
                for i, qq, jo, e in T.grid(BM, 4, NJ8, 2):
                    with T.sblock("row_pmax"):
                        vi, vqq, vjo, ve = T.axis.remap("SSRR", [i, qq, jo, e])
                        with T.init():
                            pm[vi, vqq] = m_w[vi, vqq]
                        pm[vi, vqq] = T.max(pm[vi, vqq], S_w[vi, vjo * 8 + vqq * 2 + ve])
            # quad butterfly: lanes q and q^1, then q and q^2 (two shuffles per row, not four)
            with T.sblock("row_max_scope"):
                for i, qq in T.grid(BM, 4):
                    with T.sblock("row_max"):
                        vi, vqq = T.axis.remap("SS", [i, qq])
                        mh_w[vi, vqq] = T.max(pm[vi, vqq], pm[vi, vqq // 2 * 2 + 1 - vqq % 2])
            with T.sblock("row_max2_scope"):
                for i, qq in T.grid(BM, 4):
                    with T.sblock("row_max2"):
                        vi, vqq = T.axis.remap("SS", [i, qq])
                        mn_w[vi, vqq] = T.max(mh_w[vi, vqq], mh_w[vi, (vqq + 2) % 4])
            # the reference max (lazy rescaling, see RESCALE), in place: each lane reads only its own
            # slot, so the true max is not fetched from the other lanes twice
            with T.sblock("row_ref_scope"):
                for i, qq, r in T.grid(BM, 4, 1):
                    with T.sblock("row_ref"):
                        vi, vqq, vr = T.axis.remap("SSR", [i, qq, r])
                        with T.init():
                            mn_w[vi, vqq] = T.Select((mn_w[vi, vqq] - m_w[vi, vqq]) * c > rescale, mn_w[vi, vqq],
                                                     m_w[vi, vqq])
                        mn_w[vi, vqq] = mn_w[vi, vqq]
            # P = exp2(S·c − m·c) in place, in fp32: the row sum adds the unrounded values, and P is
            # rounded to the operand type once, for the second matmul
            with T.sblock("P_exp_scope"):
                for i, j, r in T.grid(BM, BN, 1):
                    with T.sblock("P_exp"):
                        vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                        with T.init():
                            S_w[vi, vj] = T.exp2(S_w[vi, vj] * c - mn_w[vi, (vj % 8) // 2] * c)
                        S_w[vi, vj] = S_w[vi, vj]
            with T.sblock("row_sum_scope"):
                for i, qq, jo, e in T.grid(BM, 4, NJ8, 2):
                    with T.sblock("row_sum"):
                        vi, vqq, vjo, ve = T.axis.remap("SSRR", [i, qq, jo, e])
                        with T.init():
                            l_w[vi, vqq] = l_w[vi, vqq] * T.exp2((m_w[vi, vqq] - mn_w[vi, vqq]) * c)
                        l_w[vi, vqq] = l_w[vi, vqq] + S_w[vi, vjo * 8 + vqq * 2 + ve]
            with T.sblock("P_cast_scope"):
                for i, j in T.grid(BM, BN):
                    with T.sblock("P_cast"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        P_w[vi, vj] = T.Cast(pdt, S_w[vi, vj])
            with T.sblock("R_scope"):
                for i, d, r in T.grid(BM, D, 1):
                    with T.sblock("O_rescale"):
                        vi, vd, vr = T.axis.remap("SSR", [i, d, r])
                        with T.init():
                            if m_w[vi, (vd % 8) // 2] != mn_w[vi, (vd % 8) // 2]:
                                O_w[vi, vd] = O_w[vi, vd] * T.exp2((m_w[vi, (vd % 8) // 2] - mn_w[vi, (vd % 8) // 2]) * c)
                        O_w[vi, vd] = O_w[vi, vd]
            with T.sblock("O_scope"):
                for i, d, kk in T.grid(BM, D, BN):
                    with T.sblock("O_gemm"):
                        vi, vd, vk = T.axis.remap("SSR", [i, d, kk])
                        with T.init():
                            O_w[vi, vd] = O_w[vi, vd]
                        O_w[vi, vd] = O_w[vi, vd] + T.Cast(acc, P_w[vi, vk]) * T.Cast(acc, V_s[vk, vd])
            with T.sblock("m_update_scope"):
                for i, qq in T.grid(BM, 4):
                    with T.sblock("m_update"):
                        vi, vqq = T.axis.remap("SS", [i, qq])
                        m_w[vi, vqq] = mn_w[vi, vqq]
        for i, qq in T.grid(BM, 4):
            with T.sblock("l_final"):
                vi, vqq = T.axis.remap("SS", [i, qq])
                lf[vi, vqq] = (l_w[vi, 0] + l_w[vi, 1]) + (l_w[vi, 2] + l_w[vi, 3])
        for i, qq in T.grid(BM, 4):
            with T.sblock("lse_store"):
                vi, vqq = T.axis.remap("SS", [i, qq])
                if vqq == 0 and vq * BM + vi < len_q:
                    lse[bsel, vh, q_off + vq * BM + vi] = T.Select(
                        lf[vi, vqq] > zero, (m_w[vi, vqq] * c + T.log2(lf[vi, vqq])) * ln2, ninf)
        for i, d in T.grid(BM, D):
            with T.sblock("O_store"):
                vi, vd = T.axis.remap("SS", [i, d])
                if vq * BM + vi < len_q:
                    o[bsel, q_off + vq * BM + vi, vh, vd] = T.Cast(dt, T.Select(
                        lf[vi, (vd % 8) // 2] > zero, O_w[vi, vd] / lf[vi, (vd % 8) // 2], zero))

    if st.varlen:
        @T.prim_func(s_tir=True)
        def main(q: T.Buffer((1, Tq, Hq, D), dt), k: T.Buffer((1, Tk, Hkv, D), dt),
                 v: T.Buffer((1, Tk, Hkv, D), dt), cu_q: T.Buffer((NB,), "int32"),
                 cu_k: T.Buffer((NB,), "int32"), o: T.Buffer((1, Tq, Hq, D), dt),
                 lse: T.Buffer((1, Hq, Tq), acc), max_seqlen_q: T.int32, sm_scale: T.float32):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            for b, h, qt in T.grid(NB - 1, Hq, T.ceildiv(max_seqlen_q, BM)):
                with T.sblock("tile"):
                    vb, vh, vq0 = T.axis.remap("SSS", [b, h, qt])
                    T.reads(q[0, 0:Tq, vh, 0:D], k[0, 0:Tk, vh // G, 0:D], v[0, 0:Tk, vh // G, 0:D],
                            cu_q[vb:vb + 2], cu_k[vb:vb + 2])
                    T.writes(o[0, 0:Tq, vh, 0:D], lse[0, vh, 0:Tq])
                    vq = T.meta_var(T.ceildiv(max_seqlen_q, BM) - 1 - vq0 if causal else vq0)
                    tile(q, k, v, o, lse, sm_scale, 0, vh, vq, cu_q[vb], cu_q[vb + 1] - cu_q[vb], cu_k[vb], cu_k[vb + 1] - cu_k[vb],
                         Tq - 1, Tk - 1)
    else:
        @T.prim_func(s_tir=True)
        def main(q: T.Buffer((Bv, Tq, Hq, D), dt), k: T.Buffer((Bv, Tk, Hkv, D), dt),
                 v: T.Buffer((Bv, Tk, Hkv, D), dt), o: T.Buffer((Bv, Tq, Hq, D), dt),
                 lse: T.Buffer((Bv, Hq, Tq), acc), sm_scale: T.float32):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            for b, h, qt in T.grid(Bv, Hq, T.ceildiv(Tq, BM)):
                with T.sblock("tile"):
                    vb, vh, vq0 = T.axis.remap("SSS", [b, h, qt])
                    T.reads(q[vb, 0:Tq, vh, 0:D], k[vb, 0:Tk, vh // G, 0:D], v[vb, 0:Tk, vh // G, 0:D])
                    T.writes(o[vb, 0:Tq, vh, 0:D], lse[vb, vh, 0:Tq])
                    vq = T.meta_var(T.ceildiv(Tq, BM) - 1 - vq0 if causal else vq0)
                    tile(q, k, v, o, lse, sm_scale, vb, vh, vq, 0, Tq, 0, Tk, Tq - 1, Tk - 1)

    return main
