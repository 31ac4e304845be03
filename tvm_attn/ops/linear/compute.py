"""Linear-attention family as TensorIR computes: recurrent, chunk and parallel forms.

Semantics: ``reference.py`` and docs/conventions.md ("Linear attention"). Every op is a (gate, rule)
pair (``kinds.py``); one factory per form serves all of them.

One PrimFunc per static specialisation (op, K, V, dtype, dense or varlen, chunk size, value tile);
batch, heads and sequence lengths are symbolic. Every form walks one (sequence, head, value tile of
BV columns) per ``tile`` block: the state's value columns never mix, so value tiles are independent.

Kernel arguments (destination-passing; tensors the op does not use are not arguments):

    q, k [B, T, H, K] · v [B, T, H, V] · g [B, T, H] or [B, T, H, K] (fp32, log space) ·
    beta [B, T, H] (fp32; η for ttt) · h0 [N, H, K, V] (fp32) · cu_seqlens [N + 1] (varlen) ·
    o [B, T, H, V] · ht [N, H, K, V] (fp32) · scale
    varlen: B = 1 and N sequences; dense: N = B. The parallel form takes no states and reads the
    per-sequence cumulative gate (``gc``, fp32) instead of g.

Rows past a sequence's end are read at a clamped index (always in bounds) and zeroed, so they add
nothing to the state; nothing is ever written past the end.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..._tvm import T, tirx
from .kinds import OP_KINDS

F32 = "float32"


@dataclass(frozen=True)
class LinearStatic:
    """Static part of a linear-attention specialisation."""

    op: str
    key_dim: int  # K
    value_dim: int  # V
    dtype: str  # float16 | bfloat16 | float32 (q, k, v, o)
    varlen: bool

    @property
    def gate(self) -> str:
        return OP_KINDS[self.op][0]

    @property
    def rule(self) -> str:
        return OP_KINDS[self.op][1]


@dataclass(frozen=True)
class Scopes:
    """Storage scopes of the scratch buffers ("global" everywhere on the CPU)."""

    tile: str = "global"  # chunk tiles in the operand dtype (CUDA: "shared.dyn")
    acc: str = "global"  # fp32 chunk scratch and matmul results (CUDA: "shared.dyn")
    state: str = "global"  # the fp32 state of a recurrent tile (CUDA: "local", one column per thread)
    vec: str = "global"  # per-token vectors shared by a recurrent tile (CUDA: "shared")
    solve: str = "global"  # the fp32 triangular solve, one column per thread (CUDA: "local")
    frag: str = "global"  # matrix products kept in registers by the split kernels (CUDA: "warp")


def _signature(st: LinearStatic) -> list[str]:
    """Argument names of a recurrent or chunk kernel, in order."""
    names = ["q", "k", "v"]
    if st.gate != "none":
        names.append("g")
    if st.rule != "add":
        names.append("beta")
    names.append("h0")
    if st.varlen:
        names.append("cu_seqlens")
    return names + ["o", "ht", "scale"]


def _keep_params(func, names: list[str]):
    """``func`` with only the arguments in ``names`` (the unused ones are placeholders of shape (1,))."""
    params = [p for p in func.params if p.name in names]
    assert [p.name for p in params] == names, ([p.name for p in func.params], names)
    return tirx.PrimFunc(params, func.body, func.ret_type, func.attrs).with_attr("global_symbol", "main")


def _axes(st: LinearStatic):
    """Symbolic axes: batch rows of q (1 when varlen), sequences, tokens, heads, len(cu_seqlens)."""
    b, n, t, h, nc = (tirx.Var(x, "int32") for x in ("B", "N", "T", "H", "NC"))
    return (1 if st.varlen else b), (n if st.varlen else b), t, h, nc


def _gate_shape(st: LinearStatic, QB, Tv, Hv):
    return {"none": (1,), "scalar": (QB, Tv, Hv), "vector": (QB, Tv, Hv, st.key_dim)}[st.gate]


# ------------------------------------------------------------------------------------------------
# recurrent form: token by token, the state of a value tile in registers
# ------------------------------------------------------------------------------------------------

def _entry(st: LinearStatic, seq, BV: int, axes):
    """The kernel entry of the recurrent and chunk forms: one ``tile`` block per (sequence, head, value
    tile of BV columns) that runs the form's ``seq`` macro over the whole sequence. ``axes`` are the
    symbolic sizes the macro was built with (``_axes``)."""
    K, V, dt = st.key_dim, st.value_dim, st.dtype
    scalar_g, vector_g, add, varlen = st.gate == "scalar", st.gate == "vector", st.rule == "add", st.varlen
    QB, NS, Tv, Hv, NCv = axes

    @T.prim_func(s_tir=True)
    def main(q: T.Buffer((QB, Tv, Hv, K), dt), k: T.Buffer((QB, Tv, Hv, K), dt),
             v: T.Buffer((QB, Tv, Hv, V), dt), g: T.Buffer(_gate_shape(st, QB, Tv, Hv), F32),
             beta: T.Buffer((QB, Tv, Hv) if not add else (1,), F32),
             h0: T.Buffer((NS, Hv, K, V), F32), cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"),
             o: T.Buffer((QB, Tv, Hv, V), dt), ht: T.Buffer((NS, Hv, K, V), F32), scale: T.float32):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for n, h, jv in T.grid(NS, Hv, V // BV):
            with T.sblock("tile"):
                vn, vh, vv = T.axis.remap("SSS", [n, h, jv])
                T.reads(*([q[0:QB, 0:Tv, vh, 0:K], k[0:QB, 0:Tv, vh, 0:K], v[0:QB, 0:Tv, vh, vv * BV:vv * BV + BV],
                           h0[vn, vh, 0:K, vv * BV:vv * BV + BV]]
                          + ([g[0:QB, 0:Tv, vh]] if scalar_g else [])
                          + ([g[0:QB, 0:Tv, vh, 0:K]] if vector_g else [])
                          + ([beta[0:QB, 0:Tv, vh]] if not add else [])
                          + ([cu_seqlens[vn:vn + 2]] if varlen else [])))
                T.writes(o[0:QB, 0:Tv, vh, vv * BV:vv * BV + BV], ht[vn, vh, 0:K, vv * BV:vv * BV + BV])
                if varlen:
                    seq_len: T.let = cu_seqlens[vn + 1] - cu_seqlens[vn]
                    seq(q, k, v, g, beta, h0, o, ht, scale, 0, vn, vh, vv, cu_seqlens[vn], seq_len)
                else:
                    seq(q, k, v, g, beta, h0, o, ht, scale, vn, vn, vh, vv, 0, Tv)

    return _keep_params(main, _signature(st))


def recurrent(st: LinearStatic, *, block_v: int, mini_batch: int = 1, scopes: Scopes = Scopes()):
    """Build the recurrent-form PrimFunc ``main`` (the decode step when T = 1).

    Per token: decay the state (gated ops), form the update column u (add: v; delta: β(v − Sᵀk);
    ttt: η(v − S₀ᵀk) with S₀ the state at the mini-batch start), S += k uᵀ, o = scale · Sᵀq.
    """
    K, V, BV, dt = st.key_dim, st.value_dim, block_v, st.dtype
    assert V % BV == 0
    gate, rule, varlen = st.gate, st.rule, st.varlen
    # TVMScript bodies branch on Python bools (a string comparison there would become a TIR op)
    scalar_g, vector_g, gated = gate == "scalar", gate == "vector", gate != "none"
    add, delta, ttt = rule == "add", rule == "delta", rule == "ttt"
    QB, NS, Tv, Hv, NCv = _axes(st)
    zero = tirx.const(0.0, F32)
    MB = mini_batch

    def decay(g, bsel, pos, vh, vk):
        if gate == "scalar":
            return T.exp(g[bsel, pos, vh])
        if gate == "vector":
            return T.exp(g[bsel, pos, vh, vk])
        return tirx.const(1.0, F32)

    @T.macro
    def seq(q, k, v, g, beta, h0, o, ht, scale, bsel, vn, vh, vv, bos, seq_len):
        S = T.sblock_alloc_buffer((K, BV), F32, scope=scopes.state)
        S0 = T.sblock_alloc_buffer((K, BV) if ttt else (1, 1), F32, scope=scopes.state)
        qk_s = T.sblock_alloc_buffer((2, K), F32, scope=scopes.vec)  # q_t, k_t
        v_s = T.sblock_alloc_buffer((BV,), F32, scope=scopes.vec)
        d_s = T.sblock_alloc_buffer((BV,), F32, scope=scopes.state)  # Sᵀ k
        u_s = T.sblock_alloc_buffer((BV,), F32, scope=scopes.state)  # the update column
        o_s = T.sblock_alloc_buffer((BV,), F32, scope=scopes.state)
        for kk, j in T.grid(K, BV):
            with T.sblock("S_init"):
                vk, vj = T.axis.remap("SS", [kk, j])
                S[vk, vj] = h0[vn, vh, vk, vv * BV + vj]
        for t in T.serial(seq_len):
            for r, kk in T.grid(2, K):
                with T.sblock("qk_load"):
                    vt, vr, vk = T.axis.remap("SSS", [t, r, kk])
                    qk_s[vr, vk] = T.Cast(F32, T.Select(vr == 0, q[bsel, bos + vt, vh, vk], k[bsel, bos + vt, vh, vk]))
            for j in T.serial(BV):
                with T.sblock("v_load"):
                    vt, vj = T.axis.remap("SS", [t, j])
                    v_s[vj] = T.Cast(F32, v[bsel, bos + vt, vh, vv * BV + vj])
            if delta and gated:
                with T.sblock("S_decay_scope"):
                    for kk, j, r in T.grid(K, BV, 1):
                        with T.sblock("S_decay"):  # in place, written as an extent-1 reduction (bindable)
                            vt, vk, vj, vr = T.axis.remap("SSSR", [t, kk, j, r])
                            with T.init():
                                S[vk, vj] = S[vk, vj] * decay(g, bsel, bos + vt, vh, vk)
                            S[vk, vj] = S[vk, vj]
            if ttt:
                for kk, j in T.grid(K, BV):
                    with T.sblock("S0_copy"):
                        vt, vk, vj = T.axis.remap("SSS", [t, kk, j])
                        if vt % MB == 0:
                            S0[vk, vj] = S[vk, vj]
            if add:
                for j in T.serial(BV):
                    with T.sblock("u_add"):
                        vj = T.axis.remap("S", [j])
                        u_s[vj] = v_s[vj]
            else:
                for j, kk in T.grid(BV, K):
                    with T.sblock("u_dot"):
                        vj, vk = T.axis.remap("SR", [j, kk])
                        with T.init():
                            d_s[vj] = zero
                        if ttt:
                            d_s[vj] = d_s[vj] + S0[vk, vj] * qk_s[1, vk]
                        else:
                            d_s[vj] = d_s[vj] + S[vk, vj] * qk_s[1, vk]
                for j in T.serial(BV):
                    with T.sblock("u_delta"):
                        vt, vj = T.axis.remap("SS", [t, j])
                        u_s[vj] = beta[bsel, bos + vt, vh] * (v_s[vj] - d_s[vj])
            with T.sblock("S_update_scope"):
                for kk, j, r in T.grid(K, BV, 1):
                    with T.sblock("S_update"):
                        vt, vk, vj, vr = T.axis.remap("SSSR", [t, kk, j, r])
                        with T.init():
                            if add:
                                S[vk, vj] = S[vk, vj] * decay(g, bsel, bos + vt, vh, vk) + qk_s[1, vk] * u_s[vj]
                            else:
                                S[vk, vj] = S[vk, vj] + qk_s[1, vk] * u_s[vj]
                        S[vk, vj] = S[vk, vj]
            for j, kk in T.grid(BV, K):
                with T.sblock("o_dot"):
                    vj, vk = T.axis.remap("SR", [j, kk])
                    with T.init():
                        o_s[vj] = zero
                    o_s[vj] = o_s[vj] + qk_s[0, vk] * S[vk, vj]
            for j in T.serial(BV):
                with T.sblock("o_store"):
                    vt, vj = T.axis.remap("SS", [t, j])
                    o[bsel, bos + vt, vh, vv * BV + vj] = T.Cast(dt, o_s[vj] * scale)
        for kk, j in T.grid(K, BV):
            with T.sblock("ht_store"):
                vk, vj = T.axis.remap("SS", [kk, j])
                ht[vn, vh, vk, vv * BV + vj] = S[vk, vj]

    return _entry(st, seq, BV, (QB, NS, Tv, Hv, NCv))


# ------------------------------------------------------------------------------------------------
# chunk form: C tokens at a time; inside a chunk the quadratic form, across chunks the state
# ------------------------------------------------------------------------------------------------

def chunk(st: LinearStatic, *, chunk_size: int, block_v: int, op_dtype: str | None = None,
          scopes: Scopes = Scopes()):
    """Build the chunk-form PrimFunc ``main``.

    Per chunk of C rows (b = cumulative log decay from the chunk start, b_C its last row, Γ[i, j] =
    exp(b_i − b_j) for j ≤ i and 0 above the diagonal; none: b = 0):

        add:    U = V
        delta:  Tm = (I + strict_tril(diag(β) (K Kᵀ) ⊙ Γ))⁻¹      (forward substitution, fp32)
                U = Tm (β ⊙ (V − eᵇ ⊙ (K S)))                     (the WY/UT form: Tm [βV | βeᵇK] [I; −S])
        ttt:    (Tm = I: every gradient at the mini-batch start)  U = η ⊙ (V − K S)
        O  = scale · ([eᵇ ⊙ Q | (Q Kᵀ) ⊙ Γ] [S ; U])                   (one matmul, [C, K+C]·[K+C, BV])
        S' = e^{b_C} S + (K ⊙ e^{b_C − b})ᵀ U

    Every matmul reads operands in ``op_dtype`` (the inputs' dtype on CUDA, fp32 on the CPU) and
    accumulates in fp32; the state stays fp32. For ``gla`` the intra-chunk scores carry the
    per-channel decay inside the sum, Σ_k q_ik k_jk exp(b_ik − b_jk), whose exponents are ≤ 0.
    For ttt the chunk is the mini-batch.
    """
    K, V, C, BV, dt = st.key_dim, st.value_dim, chunk_size, block_v, st.dtype
    odt = op_dtype or dt
    assert V % BV == 0
    gate, rule, varlen = st.gate, st.rule, st.varlen
    # TVMScript bodies branch on Python bools (a string comparison there would become a TIR op)
    scalar_g, vector_g, gated = gate == "scalar", gate == "vector", gate != "none"
    add, delta, ttt = rule == "add", rule == "delta", rule == "ttt"
    R = 2 * C if delta else C  # rows of the first matmul: Q, and K for the Gram matrix K Kᵀ
    QB, NS, Tv, Hv, NCv = _axes(st)
    zero = tirx.const(0.0, F32)
    one = tirx.const(1.0, F32)
    smem, acc = scopes.tile, scopes.acc

    def cum(b_s, i, kk):
        # cumulative log decay of row i (channel kk for vector gates)
        if gate == "scalar":
            return b_s[i]
        return b_s[i, kk]

    def ediff(b_s, i, j, kk):
        # exp(b_i − b_j): the decay from row j to row i (i ≥ j)
        if gate == "none":
            return one
        return T.exp(cum(b_s, i, kk) - cum(b_s, j, kk))

    def edec(b_s, i, kk):
        if gate == "none":
            return one
        return T.exp(cum(b_s, i, kk))

    @T.macro
    def seq(q, k, v, g, beta, h0, o, ht, scale, bsel, vn, vh, vv, bos, seq_len):
        S = T.sblock_alloc_buffer((K, BV), F32, scope=acc)  # the state's value tile
        for kk, j in T.grid(K, BV):
            with T.sblock("S_init"):
                vk, vj = T.axis.remap("SS", [kk, j])
                S[vk, vj] = h0[vn, vh, vk, vv * BV + vj]
        n_chunks: T.let = T.ceildiv(seq_len, C)
        for c in T.serial(n_chunks):
            with T.sblock("chunk"):  # one chunk; its scratch buffers are allocated per chunk
                vc = T.axis.remap("S", [c])
                QK_s = T.sblock_alloc_buffer((R, K), odt, scope=smem)  # [Q; K]
                K_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)
                V_s = T.sblock_alloc_buffer((C, BV) if not add else (1, 1), odt, scope=smem)
                X_s = T.sblock_alloc_buffer((C, K + C), odt, scope=smem)  # [eᵇ ⊙ Q | (Q Kᵀ) ⊙ Γ]
                Y_s = T.sblock_alloc_buffer((K + C, BV), odt, scope=smem)  # [S; U]
                Kt_s = T.sblock_alloc_buffer((K, C), odt, scope=smem)  # (K ⊙ e^{b_C − b})ᵀ
                Tm_s = T.sblock_alloc_buffer((C, C) if delta else (1, 1), F32, scope=scopes.solve)
                Tl_s = T.sblock_alloc_buffer((C, C) if delta else (1, 1), odt, scope=smem)
                Rb_s = T.sblock_alloc_buffer((C, BV) if delta else (1, 1), odt, scope=smem)  # β(V − eᵇ K S)
                A_s = T.sblock_alloc_buffer((R, C), F32, scope=acc)  # [Q Kᵀ; K Kᵀ]
                b_s = T.sblock_alloc_buffer({"none": (1,), "scalar": (C,), "vector": (C, K)}[gate], F32, scope=acc)
                beta_s = T.sblock_alloc_buffer((C,) if not add else (1,), F32, scope=acc)
                O_s = T.sblock_alloc_buffer((C, BV), F32, scope=acc)
                Sa_s = T.sblock_alloc_buffer((K, BV), F32, scope=acc)
                KS_s = T.sblock_alloc_buffer((C, BV) if not add else (1, 1), F32, scope=acc)  # K S
                U_s = T.sblock_alloc_buffer((C, BV) if delta else (1, 1), F32, scope=acc)
                for kk, j in T.grid(K, BV):
                    with T.sblock("S_cast"):
                        vk, vj = T.axis.remap("SS", [kk, j])
                        Y_s[vk, vj] = T.Cast(odt, S[vk, vj])
                for i, kk in T.grid(C, K):
                    with T.sblock("Q_load"):
                        vi, vk = T.axis.remap("SS", [i, kk])
                        QK_s[vi, vk] = T.Cast(odt, T.Select(vc * C + vi < seq_len,
                                                            q[bsel, T.min(bos + vc * C + vi, Tv - 1), vh, vk], T.Cast(dt, zero)))
                for i, kk in T.grid(C, K):
                    with T.sblock("K_load"):
                        vi, vk = T.axis.remap("SS", [i, kk])
                        K_s[vi, vk] = T.Cast(odt, T.Select(vc * C + vi < seq_len,
                                                           k[bsel, T.min(bos + vc * C + vi, Tv - 1), vh, vk], T.Cast(dt, zero)))
                if delta:
                    for i, kk in T.grid(C, K):
                        with T.sblock("K2_load"):
                            vi, vk = T.axis.remap("SS", [i, kk])
                            QK_s[C + vi, vk] = T.Cast(odt, T.Select(
                                vc * C + vi < seq_len, k[bsel, T.min(bos + vc * C + vi, Tv - 1), vh, vk], T.Cast(dt, zero)))
                for i, j in T.grid(C, BV):
                    with T.sblock("V_load"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        if add:
                            Y_s[K + vi, vj] = T.Cast(odt, T.Select(
                                vc * C + vi < seq_len, v[bsel, T.min(bos + vc * C + vi, Tv - 1), vh, vv * BV + vj], T.Cast(dt, zero)))
                        else:
                            V_s[vi, vj] = T.Cast(odt, T.Select(
                                vc * C + vi < seq_len, v[bsel, T.min(bos + vc * C + vi, Tv - 1), vh, vv * BV + vj], T.Cast(dt, zero)))
                if scalar_g:
                    with T.sblock("g_scope"):
                        for i, s in T.grid(C, C):
                            with T.sblock("g_cumsum"):
                                vi, vs = T.axis.remap("SR", [i, s])
                                with T.init():
                                    b_s[vi] = zero
                                b_s[vi] = b_s[vi] + T.Select(T.And(vs <= vi, vc * C + vs < seq_len),
                                                             g[bsel, T.min(bos + vc * C + vs, Tv - 1), vh], zero)
                if vector_g:
                    with T.sblock("g_scope"):
                        for i, kk, s in T.grid(C, K, C):
                            with T.sblock("g_cumsum"):
                                vi, vk, vs = T.axis.remap("SSR", [i, kk, s])
                                with T.init():
                                    b_s[vi, vk] = zero
                                b_s[vi, vk] = b_s[vi, vk] + T.Select(T.And(vs <= vi, vc * C + vs < seq_len),
                                                                     g[bsel, T.min(bos + vc * C + vs, Tv - 1), vh, vk], zero)
                if not add:
                    for i in T.serial(C):
                        with T.sblock("beta_load"):
                            vi = T.axis.remap("S", [i])
                            beta_s[vi] = T.Select(vc * C + vi < seq_len, beta[bsel, T.min(bos + vc * C + vi, Tv - 1), vh], zero)
                if vector_g:
                    with T.sblock("A_scope"):
                        for i, j, kk in T.grid(C, C, K):
                            with T.sblock("A_gated"):
                                vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                                with T.init():
                                    A_s[vi, vj] = zero
                                A_s[vi, vj] = A_s[vi, vj] + T.Cast(F32, QK_s[vi, vk]) * T.Cast(F32, K_s[vj, vk]) * T.Select(
                                    vj <= vi, T.exp(b_s[vi, vk] - b_s[vj, vk]), zero)
                else:
                    with T.sblock("A_scope"):
                        for i, j, kk in T.grid(R, C, K):
                            with T.sblock("A_gemm"):
                                vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                                with T.init():
                                    A_s[vi, vj] = zero
                                A_s[vi, vj] = A_s[vi, vj] + T.Cast(F32, QK_s[vi, vk]) * T.Cast(F32, K_s[vj, vk])
                for i, kk in T.grid(C, K):
                    with T.sblock("Q_decay"):
                        vi, vk = T.axis.remap("SS", [i, kk])
                        X_s[vi, vk] = T.Cast(odt, T.Cast(F32, QK_s[vi, vk]) * edec(b_s, vi, vk))
                for i, j in T.grid(C, C):
                    with T.sblock("P_mask"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        if vector_g:
                            X_s[vi, K + vj] = T.Cast(odt, A_s[vi, vj])
                        else:
                            X_s[vi, K + vj] = T.Cast(odt, T.Select(vj <= vi, A_s[vi, vj] * ediff(b_s, vi, vj, 0), zero))
                for kk, j in T.grid(K, C):
                    with T.sblock("K_decay"):
                        vk, vj = T.axis.remap("SS", [kk, j])
                        Kt_s[vk, vj] = T.Cast(odt, T.Cast(F32, K_s[vj, vk]) * ediff(b_s, C - 1, vj, vk))
                if delta:
                    with T.sblock("L_scope"):
                        for i, j, r in T.grid(C, C, 1):
                            with T.sblock("L_mask"):  # L over K Kᵀ in place, as an extent-1 reduction (bindable)
                                vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                                with T.init():
                                    A_s[C + vi, vj] = T.Select(vj < vi, beta_s[vi] * A_s[C + vi, vj] * ediff(b_s, vi, vj, 0), zero)
                                A_s[C + vi, vj] = A_s[C + vi, vj]
                    for m, i, l in T.grid(C, C, C):
                        with T.sblock("T_solve"):  # Tm = (I + L)⁻¹, column m by forward substitution over rows i
                            vi, vm, vl = T.axis.remap("SSR", [i, m, l])
                            T.reads(A_s[C + vi, 0:C], Tm_s[0:C, vm])
                            T.writes(Tm_s[vi, vm])
                            with T.init():
                                Tm_s[vi, vm] = T.Select(vi == vm, one, zero)
                            Tm_s[vi, vm] = Tm_s[vi, vm] - T.Select(vl < vi, A_s[C + vi, vl] * Tm_s[vl, vm], zero)
                    for i, j in T.grid(C, C):
                        with T.sblock("T_cast"):
                            vi, vj = T.axis.remap("SS", [i, j])
                            Tl_s[vi, vj] = T.Cast(odt, Tm_s[vi, vj])
                if not add:
                    with T.sblock("KS_scope"):
                        for i, j, kk in T.grid(C, BV, K):
                            with T.sblock("KS_gemm"):
                                vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                                with T.init():
                                    KS_s[vi, vj] = zero
                                KS_s[vi, vj] = KS_s[vi, vj] + T.Cast(F32, K_s[vi, vk]) * T.Cast(F32, Y_s[vk, vj])
                    for i, j in T.grid(C, BV):
                        with T.sblock("R_store"):  # β ⊙ (V − eᵇ ⊙ K S): the delta rule's right-hand side
                            vi, vj = T.axis.remap("SS", [i, j])
                            if delta:
                                Rb_s[vi, vj] = T.Cast(odt, beta_s[vi] * (T.Cast(F32, V_s[vi, vj]) - edec(b_s, vi, 0) * KS_s[vi, vj]))
                            else:
                                Y_s[K + vi, vj] = T.Cast(odt, beta_s[vi] * (T.Cast(F32, V_s[vi, vj]) - KS_s[vi, vj]))
                if delta:
                    with T.sblock("U_scope"):
                        for i, j, l in T.grid(C, BV, C):
                            with T.sblock("U_gemm"):
                                vi, vj, vl = T.axis.remap("SSR", [i, j, l])
                                with T.init():
                                    U_s[vi, vj] = zero
                                U_s[vi, vj] = U_s[vi, vj] + T.Cast(F32, Tl_s[vi, vl]) * T.Cast(F32, Rb_s[vl, vj])
                    for i, j in T.grid(C, BV):
                        with T.sblock("U_store"):
                            vi, vj = T.axis.remap("SS", [i, j])
                            Y_s[K + vi, vj] = T.Cast(odt, U_s[vi, vj])
                with T.sblock("O_scope"):
                    for i, j, r in T.grid(C, BV, K + C):
                        with T.sblock("O_gemm"):
                            vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                            with T.init():
                                O_s[vi, vj] = zero
                            O_s[vi, vj] = O_s[vi, vj] + T.Cast(F32, X_s[vi, vr]) * T.Cast(F32, Y_s[vr, vj])
                for i, j in T.grid(C, BV):
                    with T.sblock("O_store"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        if vc * C + vi < seq_len:
                            o[bsel, bos + vc * C + vi, vh, vv * BV + vj] = T.Cast(dt, O_s[vi, vj] * scale)
                with T.sblock("Sa_scope"):
                    for kk, j, l in T.grid(K, BV, C):
                        with T.sblock("Sa_gemm"):
                            vk, vj, vl = T.axis.remap("SSR", [kk, j, l])
                            with T.init():
                                Sa_s[vk, vj] = zero
                            Sa_s[vk, vj] = Sa_s[vk, vj] + T.Cast(F32, Kt_s[vk, vl]) * T.Cast(F32, Y_s[K + vl, vj])
                with T.sblock("S_update_scope"):
                    for kk, j, r in T.grid(K, BV, 1):
                        with T.sblock("S_update"):  # in place, written as an extent-1 reduction (bindable)
                            vk, vj, vr = T.axis.remap("SSR", [kk, j, r])
                            with T.init():
                                S[vk, vj] = S[vk, vj] * edec(b_s, C - 1, vk) + Sa_s[vk, vj]
                            S[vk, vj] = S[vk, vj]
        for kk, j in T.grid(K, BV):
            with T.sblock("ht_store"):
                vk, vj = T.axis.remap("SS", [kk, j])
                ht[vn, vh, vk, vv * BV + vj] = S[vk, vj]

    return _entry(st, seq, BV, (QB, NS, Tv, Hv, NCv))


# ------------------------------------------------------------------------------------------------
# parallel form: the quadratic causal form, no state (non-delta ops)
# ------------------------------------------------------------------------------------------------

def parallel(st: LinearStatic, *, block_m: int, block_v: int, op_dtype: str | None = None,
             scopes: Scopes = Scopes()):
    """Build the parallel-form PrimFunc ``main``:  o_i = scale · Σ_{j ≤ i} (q_i · (k_j ⊙ exp(gc_i − gc_j))) v_j.

    ``gc`` is the per-sequence cumulative log decay (fp32, [B, T, H] or [B, T, H, K]); for the query
    tile of rows [i0, i0 + BM) the key tiles [j0, j0 + BM) with j0 ≤ i0 are visited.
    """
    assert st.rule == "add", "the parallel form exists for the non-delta ops"
    K, V, BM, BV, dt = st.key_dim, st.value_dim, block_m, block_v, st.dtype
    odt = op_dtype or dt
    gate, varlen = st.gate, st.varlen
    scalar_g, vector_g, gated = gate == "scalar", gate == "vector", gate != "none"
    QB, NS, Tv, Hv, NCv = _axes(st)
    zero = tirx.const(0.0, F32)
    smem = scopes.tile

    def gdiff(gc, bsel, pi, pj, vh, kk):
        if gate == "scalar":
            return T.exp(gc[bsel, pi, vh] - gc[bsel, pj, vh])
        if gate == "vector":
            return T.exp(gc[bsel, pi, vh, kk] - gc[bsel, pj, vh, kk])
        return tirx.const(1.0, F32)

    @T.macro
    def tile(q, k, v, gc, o, scale, bsel, vh, vv, vq, bos, seq_len):
        Q_s = T.sblock_alloc_buffer((BM, K), odt, scope=smem)
        K_s = T.sblock_alloc_buffer((BM, K), odt, scope=smem)
        V_s = T.sblock_alloc_buffer((BM, BV), odt, scope=smem)
        A_s = T.sblock_alloc_buffer((BM, BM), F32, scope=smem)
        P_s = T.sblock_alloc_buffer((BM, BM), odt, scope=smem)
        Ot_s = T.sblock_alloc_buffer((BM, BV), F32, scope=smem)  # P V of one key tile
        O_s = T.sblock_alloc_buffer((BM, BV), F32, scope=smem)
        last: T.let = T.min(bos + T.max(seq_len, 1) - 1, Tv - 1)
        for i, kk in T.grid(BM, K):
            with T.sblock("Q_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                Q_s[vi, vk] = T.Cast(odt, q[bsel, T.min(bos + vq * BM + vi, last), vh, vk])
        for i, j in T.grid(BM, BV):
            with T.sblock("O_init"):
                vi, vj = T.axis.remap("SS", [i, j])
                O_s[vi, vj] = zero
        for kt in T.serial(vq + 1):
            for j, kk in T.grid(BM, K):
                with T.sblock("K_load"):
                    vt, vj, vk = T.axis.remap("SSS", [kt, j, kk])
                    K_s[vj, vk] = T.Cast(odt, k[bsel, T.min(bos + vt * BM + vj, last), vh, vk])
            for j, jj in T.grid(BM, BV):
                with T.sblock("V_load"):
                    vt, vj, vjj = T.axis.remap("SSS", [kt, j, jj])
                    V_s[vj, vjj] = T.Cast(odt, v[bsel, T.min(bos + vt * BM + vj, last), vh, vv * BV + vjj])
            if vector_g:
                with T.sblock("A_scope"):
                    vt = T.axis.remap("S", [kt])
                    for i, j, kk in T.grid(BM, BM, K):
                        with T.sblock("A_gated"):
                            vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                            with T.init():
                                A_s[vi, vj] = zero
                            A_s[vi, vj] = A_s[vi, vj] + T.Cast(F32, Q_s[vi, vk]) * T.Cast(F32, K_s[vj, vk]) * T.Select(
                                vt * BM + vj <= vq * BM + vi,
                                gdiff(gc, bsel, T.min(bos + vq * BM + vi, last), T.min(bos + vt * BM + vj, last), vh, vk),
                                zero)
            else:
                with T.sblock("A_scope"):
                    for i, j, kk in T.grid(BM, BM, K):
                        with T.sblock("A_gemm"):
                            vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                            with T.init():
                                A_s[vi, vj] = zero
                            A_s[vi, vj] = A_s[vi, vj] + T.Cast(F32, Q_s[vi, vk]) * T.Cast(F32, K_s[vj, vk])
            for i, j in T.grid(BM, BM):
                with T.sblock("P_mask"):
                    vt, vi, vj = T.axis.remap("SSS", [kt, i, j])
                    if vector_g:
                        P_s[vi, vj] = T.Cast(odt, A_s[vi, vj])
                    else:
                        P_s[vi, vj] = T.Cast(odt, T.Select(
                            T.And(vt * BM + vj <= vq * BM + vi, vt * BM + vj < seq_len),
                            A_s[vi, vj] * gdiff(gc, bsel, T.min(bos + vq * BM + vi, last),
                                                T.min(bos + vt * BM + vj, last), vh, 0), zero))
            with T.sblock("O_scope"):
                for i, j, r in T.grid(BM, BV, BM):
                    with T.sblock("O_gemm"):
                        vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                        with T.init():
                            Ot_s[vi, vj] = zero
                        Ot_s[vi, vj] = Ot_s[vi, vj] + T.Cast(F32, P_s[vi, vr]) * T.Cast(F32, V_s[vr, vj])
            with T.sblock("O_acc_scope"):
                for i, j, r in T.grid(BM, BV, 1):
                    with T.sblock("O_acc"):  # in place, written as an extent-1 reduction (bindable)
                        vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                        with T.init():
                            O_s[vi, vj] = O_s[vi, vj] + Ot_s[vi, vj]
                        O_s[vi, vj] = O_s[vi, vj]
        for i, j in T.grid(BM, BV):
            with T.sblock("O_store"):
                vi, vj = T.axis.remap("SS", [i, j])
                if vq * BM + vi < seq_len:
                    o[bsel, bos + vq * BM + vi, vh, vv * BV + vj] = T.Cast(dt, O_s[vi, vj] * scale)

    @T.prim_func(s_tir=True)
    def main(q: T.Buffer((QB, Tv, Hv, K), dt), k: T.Buffer((QB, Tv, Hv, K), dt),
             v: T.Buffer((QB, Tv, Hv, V), dt), gc: T.Buffer(_gate_shape(st, QB, Tv, Hv), F32),
             cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"), o: T.Buffer((QB, Tv, Hv, V), dt),
             max_seqlen: T.int32, scale: T.float32):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for n, h, jv, qt in T.grid(NCv - 1 if varlen else NS, Hv, V // BV, T.ceildiv(max_seqlen, BM)):
            with T.sblock("tile"):
                vn, vh, vv, vq = T.axis.remap("SSSS", [n, h, jv, qt])
                T.reads(*([q[0:QB, 0:Tv, vh, 0:K], k[0:QB, 0:Tv, vh, 0:K], v[0:QB, 0:Tv, vh, vv * BV:vv * BV + BV]]
                          + ([gc[0:QB, 0:Tv, vh]] if scalar_g else [])
                          + ([gc[0:QB, 0:Tv, vh, 0:K]] if vector_g else [])
                          + ([cu_seqlens[vn:vn + 2]] if varlen else [])))
                T.writes(o[0:QB, 0:Tv, vh, vv * BV:vv * BV + BV])
                if varlen:
                    seq_len: T.let = cu_seqlens[vn + 1] - cu_seqlens[vn]
                    tile(q, k, v, gc, o, scale, 0, vh, vv, vq, cu_seqlens[vn], seq_len)
                else:
                    tile(q, k, v, gc, o, scale, vn, vh, vv, vq, 0, Tv)

    names = ["q", "k", "v"] + (["gc"] if gated else []) + (["cu_seqlens"] if varlen else []) + \
        ["o", "max_seqlen", "scale"]
    return _keep_params(main, names)
