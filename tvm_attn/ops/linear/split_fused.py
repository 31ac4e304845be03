"""The state and output kernels of the split chunk form fused into one (part ``fused``: ``linear_attention``,
``simple_gla``, ``delta_rule``, ``gated_delta_rule``), for calls with many (sequence, head) pairs.

The split form (``split.py``) stores every chunk's incoming state h[c] (and for the delta rules V') from
its state kernel and reads them back, with q and k again, in its output kernel. When a call has enough
(sequence, head) pairs that one CTA per (sequence, head, value tile) fills the card, a CTA can produce
the output of each chunk as it walks the chunks: the incoming state (and V') are in its registers
already. Nothing but q, k, v (the delta rules: W and U from prep) and the gates is read, nothing but o
and the final state written. Per chunk, with S the state tile [K, BV] before the chunk (held
transposed, Sᵀ, as in ``split.state``) and ``b`` the chunk-local cumulative log decay:

    Y  = odt(Sᵀ)                              (in the registers: the A operand of Y Qᵀ and Y Wᵀ)
    delta:  V'ᵀ = Uᵀ − Y Wᵀ                    (fp32, in the registers: split.state's vt form)
    Oᵀ = (Y Qᵀ) ⊙ e^{b}ᵀ + odt(Vᵀ) Pᵀ,  P = odt((Q Kᵀ) ⊙ Γ)   (V: v, or V' for the delta rules; P
                                                through shared memory)
    S  = e^{b_C} S + Kᵀ odt(V ⊙ e^{b_C − b})   (split.state's update)
    o  = scale · O                            (rows inside the sequence)

The output is formed transposed, Oᵀ [BV, C], so both of its products take their A operand from the
registers that already hold it (Y, and Vᵀ: loaded by ldmatrix.trans for the update, or V'ᵀ formed
there) and the warps that own the state's value rows own Oᵀ's: only P crosses warps. The math is
``split.output``'s on what ``split.state`` would have stored (h[c] = Y, vn = odt(V')): the same roundings.
"""
from __future__ import annotations

from ..._tvm import T, tirx
from .compute import F32, LinearStatic, _axes, _keep_params
from .split import _check, _clamped, _decay, _exp, _initial, _state_loads, _state_update, signature


def fused(st: LinearStatic, *, chunk_size: int, block_v: int, op_dtype: str | None = None, smem: str = "global",
          acc: str = "global", frag: str = "global", solve: str = "global", min_chunks: int = 1):
    """Build the PrimFunc ``main`` of the fused state and output pass (add or delta rule): one tile per
    (sequence, head, value tile) walks the chunks in order from ``h0`` (or zero when it is empty), the
    state tile [BV, K] (transposed, fp32) in ``frag`` throughout. ``frag`` and ``solve`` as in
    ``split.state``; the chunk loop runs at least ``min_chunks`` times (a software pipeline's depth)."""
    _check(st)
    K, V, C, BV, dt = st.key_dim, st.value_dim, chunk_size, block_v, st.dtype
    odt = op_dtype or dt
    gated, delta, varlen = st.gate != "none", st.rule == "delta", st.varlen
    assert V % BV == 0
    QB, NS, Tv, Hv, NCv = _axes(st)
    N0 = tirx.Var("N0", "int32")
    zero = tirx.const(0.0, F32)
    one = tirx.const(1.0, F32)

    loads = _state_loads(st, C, K, BV)
    update = _state_update(st, C, K, BV)

    def values(ws, vt_w, j, i):  # the values the update decays (fp32): V'ᵀ before rounding, or Vᵀ
        return ws[j, i] if delta else T.Cast(F32, vt_w[j, i])

    @T.macro
    def scores(Q_s, K_s, b_s, A_w, P_s):  # P = odt((Q Kᵀ) ⊙ Γ), warps owning 16-row chunk tiles of Q Kᵀ
        with T.sblock("A_scope"):
            for i, l, kk in T.grid(C, C, K):
                with T.sblock("A_gemm"):
                    vi, vl, vk = T.axis.remap("SSR", [i, l, kk])
                    with T.init():
                        A_w[vi, vl] = zero
                    A_w[vi, vl] = A_w[vi, vl] + T.Cast(F32, Q_s[vi, vk]) * T.Cast(F32, K_s[vl, vk])
        with T.sblock("A_mask_scope"):  # (in the registers: a pass reading the gates from shared memory
            # and writing it would get a barrier per element, TVM pooling the shared buffers)
            for i, l, r in T.grid(C, C, 1):
                with T.sblock("A_mask"):  # in place, written as an extent-1 reduction (bindable)
                    vi, vl, vr = T.axis.remap("SSR", [i, l, r])
                    with T.init():
                        if gated:
                            A_w[vi, vl] = T.Select(vl <= vi, A_w[vi, vl] * _exp(b_s[vi] - b_s[vl]), zero)
                        else:
                            A_w[vi, vl] = T.Select(vl <= vi, A_w[vi, vl], zero)
                    A_w[vi, vl] = A_w[vi, vl]
        with T.sblock("P_calc_scope"):
            for i, l in T.grid(C, C):
                with T.sblock("P_calc"):
                    vi, vl = T.axis.remap("SS", [i, l])
                    P_s[vi, vl] = T.Cast(odt, A_w[vi, vl])

    @T.macro
    def seq(q, k, v, w, u, gc, h0, o, ht, scale, bsel, vn_, vh, vv, bos, seq_len):
        ST_w = T.sblock_alloc_buffer((BV, K), F32, scope=frag)  # Sᵀ
        Y_w = T.sblock_alloc_buffer((BV, K), odt, scope=frag)  # odt(Sᵀ): Y Qᵀ's (and Y Wᵀ's) A operand
        Q_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)
        K_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)
        W_s = T.sblock_alloc_buffer((C, K) if delta else (1, 1), odt, scope=smem)
        V_s = T.sblock_alloc_buffer((C, BV), odt, scope=smem)  # V (add) or U (delta)
        WS_w = T.sblock_alloc_buffer((BV, C) if delta else (1, 1), F32, scope=frag)  # Y Wᵀ, then V'ᵀ in place
        b_s = T.sblock_alloc_buffer((C,) if gated else (1,), F32, scope=acc)
        A_w = T.sblock_alloc_buffer((C, C), F32, scope=frag)  # Q Kᵀ
        P_s = T.sblock_alloc_buffer((C, C), odt, scope=smem)  # odt((Q Kᵀ) ⊙ Γ): Vᵀ Pᵀ's B operand
        OT_w = T.sblock_alloc_buffer((BV, C), F32, scope=frag)  # Oᵀ
        Vt_w = T.sblock_alloc_buffer((BV, C), odt, scope=frag)  # Vᵀ: Vᵀ Pᵀ's A operand
        Vd_w = T.sblock_alloc_buffer((BV, C), odt, scope=frag)  # odt(Vᵀ ⊙ d): the update's A operand
        O_s = T.sblock_alloc_buffer((C, BV), dt, scope=smem)  # the output tile, stored in whole rows
        eC = T.sblock_alloc_buffer((1,), F32, scope=solve)  # e^{b_C} (1 past the sequence's end)
        for j, kk in T.grid(BV, K):
            with T.sblock("S_init"):
                vj, vk = T.axis.remap("SS", [j, kk])
                ST_w[vj, vk] = _initial(h0, vn_, vh, vk, vv * BV + vj)
        n_c: T.let = T.ceildiv(seq_len, C)  # a bound var: the pipeline pass compares it symbolically
        for c in T.serial(T.max(n_c, min_chunks)):
            for i, kk in T.grid(C, K):
                with T.sblock("Q_load"):
                    vc, vi, vk = T.axis.remap("SSS", [c, i, kk])
                    Q_s[vi, vk] = q[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk]
            loads(c, k, v, w, u, gc, K_s, W_s, V_s, b_s, bsel, vh, vv, 0, bos, seq_len)  # (all K: key tile 0)
            with T.sblock("S_cast_scope"):  # (scope blocks: the fragment layout maps a block's own loops)
                for j, kk in T.grid(BV, K):
                    with T.sblock("S_cast"):
                        vj, vk = T.axis.remap("SS", [j, kk])
                        Y_w[vj, vk] = T.Cast(odt, ST_w[vj, vk])
            with T.sblock("OT_scope"):
                for j, i, kk in T.grid(BV, C, K):
                    with T.sblock("OT_gemm"):  # Oᵀ = Y Qᵀ
                        vj, vi, vk = T.axis.remap("SSR", [j, i, kk])
                        with T.init():
                            OT_w[vj, vi] = zero
                        OT_w[vj, vi] = OT_w[vj, vi] + T.Cast(F32, Y_w[vj, vk]) * T.Cast(F32, Q_s[vi, vk])
            if delta:  # V'ᵀ = Uᵀ − Y Wᵀ in the registers (split.state's vt form)
                with T.sblock("WS_scope"):
                    for j, i, kk in T.grid(BV, C, K):
                        with T.sblock("WS_gemm"):
                            vj, vi, vk = T.axis.remap("SSR", [j, i, kk])
                            with T.init():
                                WS_w[vj, vi] = zero
                            WS_w[vj, vi] = WS_w[vj, vi] + T.Cast(F32, Y_w[vj, vk]) * T.Cast(F32, W_s[vi, vk])
                with T.sblock("Vn_form_scope"):
                    for j, i, r in T.grid(BV, C, 1):
                        with T.sblock("Vn_form"):  # in place, written as an extent-1 reduction (bindable)
                            vj, vi, vr = T.axis.remap("SSR", [j, i, r])
                            with T.init():
                                WS_w[vj, vi] = T.Cast(F32, V_s[vi, vj]) - WS_w[vj, vi]
                            WS_w[vj, vi] = WS_w[vj, vi]
            if not delta:
                scores(Q_s, K_s, b_s, A_w, P_s)
            if gated:
                with T.sblock("OT_decay_scope"):
                    for j, i, r in T.grid(BV, C, 1):
                        with T.sblock("OT_decay"):  # in place, written as an extent-1 reduction (bindable)
                            vj, vi, vr = T.axis.remap("SSR", [j, i, r])
                            with T.init():
                                OT_w[vj, vi] = OT_w[vj, vi] * _exp(b_s[vi])
                            OT_w[vj, vi] = OT_w[vj, vi]
                with T.sblock("e_calc"):
                    vc = T.axis.remap("S", [c])
                    eC[0] = T.Select(vc < n_c, _exp(b_s[C - 1]), one)
            if delta:  # the values of the output: V' rounded (as split.state stores it for split.output)
                with T.sblock("Vn_round_scope"):
                    for j, i in T.grid(BV, C):
                        with T.sblock("Vn_round"):
                            vj, vi = T.axis.remap("SS", [j, i])
                            Vt_w[vj, vi] = T.Cast(odt, WS_w[vj, vi])
            else:
                with T.sblock("Vt_scope"):  # Vᵀ into the A operand's registers as it is (CUDA: ldmatrix.trans)
                    for i, j in T.grid(C, BV):
                        with T.sblock("Vt_load"):
                            vi, vj = T.axis.remap("SS", [i, j])
                            Vt_w[vj, vi] = V_s[vi, vj]
            with T.sblock("V_decay_scope"):
                vc = T.axis.remap("S", [c])
                for j, i in T.grid(BV, C):
                    with T.sblock("V_decay"):  # d_i = e^{b_C − b_i} inside the sequence, 0 past its end
                        vj, vi = T.axis.remap("SS", [j, i])
                        Vd_w[vj, vi] = T.Cast(odt, _decay(st, C, values(WS_w, Vt_w, vj, vi), b_s, vc, vi, seq_len))
            update(c, ST_w, Vd_w, K_s, eC)
            if delta:  # (after the update: V'ᵀ in fp32 is no longer live, so fewer registers are at once)
                scores(Q_s, K_s, b_s, A_w, P_s)
            with T.sblock("OV_scope"):
                for j, i, l in T.grid(BV, C, C):
                    with T.sblock("OV_gemm"):  # Oᵀ += Vᵀ Pᵀ, accumulated onto Oᵀ
                        vj, vi, vl = T.axis.remap("SSR", [j, i, l])
                        with T.init():
                            OT_w[vj, vi] = OT_w[vj, vi]
                        OT_w[vj, vi] = OT_w[vj, vi] + T.Cast(F32, Vt_w[vj, vl]) * T.Cast(F32, P_s[vi, vl])
            with T.sblock("O_cast_scope"):
                for j, i in T.grid(BV, C):
                    with T.sblock("O_cast"):
                        vj, vi = T.axis.remap("SS", [j, i])
                        O_s[vi, vj] = T.Cast(dt, OT_w[vj, vi] * scale)
            for i, j in T.grid(C, BV):
                with T.sblock("O_store"):
                    vc, vi, vj = T.axis.remap("SSS", [c, i, j])
                    if vc * C + vi < seq_len:
                        o[bsel, bos + vc * C + vi, vh, vv * BV + vj] = O_s[vi, vj]
        for j, kk in T.grid(BV, K):
            with T.sblock("ht_store"):
                vj, vk = T.axis.remap("SS", [j, kk])
                ht[vn_, vh, vk, vv * BV + vj] = ST_w[vj, vk]

    @T.prim_func(s_tir=True)
    def main(q: T.Buffer((QB, Tv, Hv, K), dt), k: T.Buffer((QB, Tv, Hv, K), dt), v: T.Buffer((QB, Tv, Hv, V), dt),
             w: T.Buffer((QB, Tv, Hv, K) if delta else (1,), odt), u: T.Buffer((QB, Tv, Hv, V) if delta else (1,), odt),
             gc: T.Buffer((QB, Tv, Hv) if gated else (1,), F32), h0: T.Buffer((N0, Hv, K, V), F32),
             cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"),
             o: T.Buffer((QB, Tv, Hv, V), dt), ht: T.Buffer((NS, Hv, K, V), F32), scale: T.float32):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for n, hh, jv in T.grid(NS, Hv, V // BV):
            with T.sblock("tile"):
                vn_, vh, vv = T.axis.remap("SSS", [n, hh, jv])
                T.reads(*([q[0:QB, 0:Tv, vh, 0:K], k[0:QB, 0:Tv, vh, 0:K], h0[vn_, vh, 0:K, 0:V]]
                          + ([w[0:QB, 0:Tv, vh, 0:K], u[0:QB, 0:Tv, vh, 0:V]] if delta else [v[0:QB, 0:Tv, vh, 0:V]])
                          + ([gc[0:QB, 0:Tv, vh]] if gated else []) + ([cu_seqlens[0:NCv]] if varlen else [])))
                T.writes(o[0:QB, 0:Tv, vh, vv * BV:vv * BV + BV], ht[vn_, vh, 0:K, vv * BV:vv * BV + BV])
                if varlen:
                    bos: T.let = cu_seqlens[vn_]
                    seq(q, k, v, w, u, gc, h0, o, ht, scale, 0, vn_, vh, vv, bos, cu_seqlens[vn_ + 1] - bos)
                else:
                    seq(q, k, v, w, u, gc, h0, o, ht, scale, vn_, vn_, vh, vv, 0, Tv)

    return _keep_params(main, signature(st, "fused"))
