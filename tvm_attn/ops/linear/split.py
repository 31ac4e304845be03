"""The chunk form split into kernels launched in sequence (the structure of flash-linear-attention's
chunk forward), for the scalar-gated and ungated ops: ``linear_attention``, ``simple_gla``,
``delta_rule``, ``gated_delta_rule`` (``split_gla.py``: gla's state and output kernels).

    prep    (delta rules) one tile per (chunk, head), all chunks in parallel:
                L = strict_tril(diag(β) (K Kᵀ) ⊙ Γ),  Tm = (I + L)⁻¹
                W = odt(Tm diag(β eᵇ)) K,  U = odt(Tm diag(β)) V
    state   one tile per (sequence, head, value tile[, key tile for the add rule]) walks the chunks in
            order doing only the state recurrence; stores each chunk's incoming state h[c]:
                add:    S' = e^{b_C} S + Kᵀ (V ⊙ e^{b_C − b})
                delta:  V' = U − W odt(S)   (stored: the output kernel's values)
                        S' = e^{b_C} S + Kᵀ (V' ⊙ e^{b_C − b})
    output  one tile per (chunk, head, value tile), all in parallel:
                O = scale · (eᵇ ⊙ (Q h[c]) + odt((Q Kᵀ) ⊙ Γ) (V or V'))

For many (sequence, head) pairs the state and output passes run as one kernel instead (``split_fused.py``:
no h or V' stored and read back).

``b`` is the chunk-local cumulative log decay (``gc``, fp32, computed by the caller: the sum of g from
the chunk's first row to row i), ``b_C`` its value at the chunk's last row (rows past a sequence's end
repeat the last valid row's value), Γ[i, j] = exp(b_i − b_j) for j ≤ i and 0 above. The math is the
single-kernel chunk form's (``compute.chunk``), reassociated.

On CUDA every matrix product keeps its result in registers (``frag``, mma fragments) and the state
stays in registers across the whole chunk loop; the state kernel is written for Sᵀ (= Vdᵀ K), so the
operand computed in registers (the decayed values) is the mma's A operand, the only one an mma takes
from registers (``_tvm.mma_intrins``). Results that leave a kernel (h, V', W, U, O) are rounded once
into shared memory and copied out in whole rows (``Y_s``, ``Vn_s``, ``K_s``/``V_s`` reused, ``O_s``).

Scratch (allocated by the caller, in the operand dtype ``odt``): ``w`` [B, T, H, K] and ``u``
[B, T, H, V] (prep → state), ``vn`` [B, T, H, V] (V', state → output), ``h`` [NTt, H, V, K] (each
chunk's incoming state, transposed; state → output; chunk c of sequence n is row ``n · ceil(T / C) + c``
when dense, ``chunk_offsets[n] + c`` when varlen). Varlen kernels walk a per-sequence chunk index space:
``chunk_offsets`` [N + 1] (state) and ``chunk_indices`` [NTt, 2] = (sequence, chunk of the sequence)
(prep, output), computed by the caller.

Chunk tiles are plain copies of rows clamped into their own sequence (``_clamped``; so CUDA stages them
with 16-byte cp.async copies): the rows past a sequence's end are masked where they would matter (the
decay factor of the state update is 0 for them; Γ and L are 0 above the diagonal, so a row inside the
sequence never meets them) and are never stored; no kernel writes past a sequence's end.
"""
from __future__ import annotations

from ..._tvm import T, tirx
from .compute import F32, LinearStatic, _axes, _gate_shape, _keep_params

PARTS = ("prep", "state", "output", "fused")  # (fused: split_fused.py, not gla)


LOG2E = 1.4426950408889634


def _exp(x):
    """e^x as 2^(x log2 e): on CUDA a multiply and the ex2 unit (exp2f: its approximation, relative error
    about 2^-22, and a denormal fixup) instead of expf's ten-odd instructions of range reduction; the
    kernels round what they compute from it to fp16/bf16 (or sum it in fp32)."""
    return T.exp2(x * tirx.const(LOG2E, F32))


def _clamped(bos, r, seq_len):
    """Row ``r`` of the sequence starting at ``bos``, clamped inside it; an empty sequence reads a row
    next to it (always in bounds: every use of such a row is masked)."""
    return T.max(T.min(bos + r, bos + seq_len - 1), 0)


def _initial(h0, n, h, k, j):
    """Element (k, j) of sequence ``n``'s initial state (head ``h``), or 0 where ``h0`` has no row ``n``: a
    call without an initial state passes an empty ``h0`` [0, H, K, V] (nothing allocated, filled or read)."""
    return T.if_then_else(n < h0.shape[0], h0[n, h, k, j], tirx.const(0.0, F32))


def _decay(st: LinearStatic, C: int, x, b_s, vc, i, seq_len):
    """``x`` · d_i, d_i = e^{b_C − b_i} for row ``i`` of chunk ``vc`` inside the sequence, 0 past its end
    (the state update's decay of its values; ``split.state`` and ``split_fused``). Branch-free when
    gated: a clamped row's gates are a real row's, so its exponent is finite and <= 0."""
    if st.gate != "none":
        return x * (_exp(b_s[C - 1] - b_s[i]) * T.Cast(F32, vc * C + i < seq_len))
    return T.Select(vc * C + i < seq_len, x, tirx.const(0.0, F32))


def _state_loads(st: LinearStatic, C: int, BK: int, BV: int):
    """A macro: one chunk's tiles of the state recurrence (``split.state`` and ``split_fused``), plain
    copies of clamped rows in this order: K (key tile ``vk0``), W (delta rules), V or U (value tile
    ``vv``), the gates' b (gated)."""
    K, gated, delta = st.key_dim, st.gate != "none", st.rule == "delta"

    @T.macro
    def loads(c, k, v, w, u, gc, K_s, W_s, V_s, b_s, bsel, vh, vv, vk0, bos, seq_len):
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

    return loads


def _state_update(st: LinearStatic, C: int, BK: int, BV: int):
    """A macro: the state update of one chunk (``split.state`` and ``split_fused``), Sᵀ = e^{b_C} Sᵀ +
    Vdᵀ K on the fp32 state tile ``ST_w`` [BV, BK] in place (gated: the decay e^{b_C} in ``eC``)."""
    gated = st.gate != "none"

    @T.macro
    def update(c, ST_w, Vd_w, K_s, eC):
        if gated:
            with T.sblock("S_decay_scope"):
                vc = T.axis.remap("S", [c])
                for j, kk, r in T.grid(BV, BK, 1):
                    with T.sblock("S_decay"):  # in place, written as an extent-1 reduction (bindable)
                        vj, vk, vr = T.axis.remap("SSR", [j, kk, r])
                        with T.init():
                            ST_w[vj, vk] = ST_w[vj, vk] * eC[0]
                        ST_w[vj, vk] = ST_w[vj, vk]
        with T.sblock("S_scope"):
            for j, kk, l in T.grid(BV, BK, C):
                with T.sblock("S_gemm"):  # Sᵀ += Vdᵀ K, accumulated onto the state
                    vj, vk, vl = T.axis.remap("SSR", [j, kk, l])
                    with T.init():
                        ST_w[vj, vk] = ST_w[vj, vk]
                    ST_w[vj, vk] = ST_w[vj, vk] + T.Cast(F32, Vd_w[vj, vl]) * T.Cast(F32, K_s[vl, vk])

    return update


def signature(st: LinearStatic, part: str) -> list[str]:
    """Argument names of ``part``'s kernel, in order."""
    gated, delta, varlen = st.gate != "none", st.rule == "delta", st.varlen
    gc = ["gc"] if gated else []
    if part == "prep":
        return ["k", "v", *gc, "beta", *(["cu_seqlens", "chunk_indices"] if varlen else []), "w", "u"]
    if part == "state_local":
        return ["k", "v", *gc, "seg_rows", "ht", *(["gt"] if gated else [])]
    if part == "carry":
        return ["ht_local", *(["gt"] if gated else []), "h0", "seg_offsets", "hin"]
    if part == "cumsum":
        return ["g", *(["cu_seqlens", "chunk_indices"] if varlen else []), "gc"]
    if part == "fused":  # (split_fused.py: the state and output in one pass)
        return ["q", "k", *(["w", "u"] if delta else ["v"]), *gc, "h0", *(["cu_seqlens"] if varlen else []), "o", "ht",
                "scale"]
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
         acc: str = "global", solve: str = "global", frag: str = "global"):
    """Build the PrimFunc ``main`` of the delta rules' per-chunk preparation (W, U):

        L = strict_tril(diag(β) (K Kᵀ) ⊙ Γ)            (K Kᵀ and the mask in registers, ``frag``)
        Tm = (I + L)⁻¹                                   (forward substitution, a column per thread)
        W = odt(Tm diag(β eᵇ)) K,   U = odt(Tm diag(β)) V

    The chunk tiles are plain copies of clamped rows: a row inside the sequence only meets earlier rows
    (L is strictly lower triangular), and rows past the end are not stored."""
    _check(st)
    assert st.rule == "delta"
    K, V, C, dt = st.key_dim, st.value_dim, chunk_size, st.dtype
    odt = op_dtype or dt
    gated, varlen = st.gate != "none", st.varlen
    QB, NS, Tv, Hv, NCv = _axes(st)
    NTt = tirx.Var("NTt", "int32")
    zero = tirx.const(0.0, F32)
    one = tirx.const(1.0, F32)

    @T.macro
    def body(k, v, gc, beta, w, u, bsel, vh, vc, bos, seq_len):
        K_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)  # K (the operands of K Kᵀ, Tm K), then W stored
        Ka_w = T.sblock_alloc_buffer((C, K), odt, scope=frag)  # K as K Kᵀ's A operand, in registers
        V_s = T.sblock_alloc_buffer((C, V), odt, scope=smem)  # V, then U stored
        b_s = T.sblock_alloc_buffer((C,) if gated else (1,), F32, scope=acc)
        beta_s = T.sblock_alloc_buffer((C,), F32, scope=acc)
        A_w = T.sblock_alloc_buffer((C, C), F32, scope=frag)  # K Kᵀ, then L in place
        L_s = T.sblock_alloc_buffer((C, C), F32, scope=acc)
        Tm_s = T.sblock_alloc_buffer((C, C), F32, scope=solve)
        sc = T.sblock_alloc_buffer((C, 2), F32, scope=solve)  # per column: β eᵇ, β
        Tk_s = T.sblock_alloc_buffer((C, C), odt, scope=smem)  # Tm diag(β eᵇ)
        Tv_s = T.sblock_alloc_buffer((C, C), odt, scope=smem)  # Tm diag(β)
        W_w = T.sblock_alloc_buffer((C, K), F32, scope=frag)
        U_w = T.sblock_alloc_buffer((C, V), F32, scope=frag)
        for i, kk in T.grid(C, K):
            with T.sblock("K_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                K_s[vi, vk] = k[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk]
        for i, j in T.grid(C, V):
            with T.sblock("V_load"):
                vi, vj = T.axis.remap("SS", [i, j])
                V_s[vi, vj] = v[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vj]
        if gated:
            for i in T.serial(C):
                with T.sblock("b_load"):
                    vi = T.axis.remap("S", [i])
                    b_s[vi] = gc[bsel, _clamped(bos, vc * C + vi, seq_len), vh]
        for i in T.serial(C):
            with T.sblock("beta_load"):
                vi = T.axis.remap("S", [i])
                beta_s[vi] = beta[bsel, _clamped(bos, vc * C + vi, seq_len), vh]
        for i, kk in T.grid(C, K):
            with T.sblock("Ka_frag"):
                vi, vk = T.axis.remap("SS", [i, kk])
                Ka_w[vi, vk] = K_s[vi, vk]
        with T.sblock("A_scope"):
            for i, j, kk in T.grid(C, C, K):
                with T.sblock("A_gemm"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, kk])
                    with T.init():
                        A_w[vi, vj] = zero
                    A_w[vi, vj] = A_w[vi, vj] + T.Cast(F32, Ka_w[vi, vk]) * T.Cast(F32, K_s[vj, vk])
        with T.sblock("L_scope"):
            for i, j, r in T.grid(C, C, 1):
                with T.sblock("L_mask"):  # L over K Kᵀ in place, as an extent-1 reduction (bindable)
                    vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                    with T.init():
                        A_w[vi, vj] = T.Select(vj < vi, beta_s[vi] * A_w[vi, vj]
                                               * (_exp(b_s[vi] - b_s[vj]) if gated else one), zero)
                    A_w[vi, vj] = A_w[vi, vj]
        for i, j in T.grid(C, C):
            with T.sblock("L_store"):
                vi, vj = T.axis.remap("SS", [i, j])
                L_s[vi, vj] = A_w[vi, vj]
        for m, i, l in T.grid(C, C, C):
            with T.sblock("T_solve"):  # Tm = (I + L)⁻¹, column m by forward substitution over rows i
                vm, vi, vl = T.axis.remap("SSR", [m, i, l])
                T.reads(L_s[vi, 0:C], Tm_s[0:C, vm])
                T.writes(Tm_s[vi, vm])
                with T.init():
                    Tm_s[vi, vm] = T.Select(vi == vm, one, zero)
                Tm_s[vi, vm] = Tm_s[vi, vm] - T.Select(vl < vi, L_s[vi, vl] * Tm_s[vl, vm], zero)
        for m in T.serial(C):
            with T.sblock("T_scale"):  # the column scales in registers: T_cast then reads no shared memory
                vm = T.axis.remap("S", [m])
                sc[vm, 0] = beta_s[vm] * (_exp(b_s[vm]) if gated else one)
                sc[vm, 1] = beta_s[vm]
        for m, i in T.grid(C, C):
            with T.sblock("T_cast"):
                vm, vi = T.axis.remap("SS", [m, i])
                Tk_s[vi, vm] = T.Cast(odt, Tm_s[vi, vm] * sc[vm, 0])
                Tv_s[vi, vm] = T.Cast(odt, Tm_s[vi, vm] * sc[vm, 1])
        with T.sblock("W_scope"):
            for i, j, l in T.grid(C, K, C):
                with T.sblock("W_gemm"):
                    vi, vj, vl = T.axis.remap("SSR", [i, j, l])
                    with T.init():
                        W_w[vi, vj] = zero
                    W_w[vi, vj] = W_w[vi, vj] + T.Cast(F32, Tk_s[vi, vl]) * T.Cast(F32, K_s[vl, vj])
        # W and U leave through shared memory (K_s and V_s, no longer read), so their stores are rows
        with T.sblock("W_cast_scope"):
            for i, kk in T.grid(C, K):
                with T.sblock("W_cast"):
                    vi, vk = T.axis.remap("SS", [i, kk])
                    K_s[vi, vk] = T.Cast(odt, W_w[vi, vk])
        for i, kk in T.grid(C, K):
            with T.sblock("W_store"):
                vi, vk = T.axis.remap("SS", [i, kk])
                if vc * C + vi < seq_len:
                    w[bsel, bos + vc * C + vi, vh, vk] = K_s[vi, vk]
        with T.sblock("U_scope"):
            for i, j, l in T.grid(C, V, C):
                with T.sblock("U_gemm"):
                    vi, vj, vl = T.axis.remap("SSR", [i, j, l])
                    with T.init():
                        U_w[vi, vj] = zero
                    U_w[vi, vj] = U_w[vi, vj] + T.Cast(F32, Tv_s[vi, vl]) * T.Cast(F32, V_s[vl, vj])
        with T.sblock("U_cast_scope"):
            for i, j in T.grid(C, V):
                with T.sblock("U_cast"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    V_s[vi, vj] = T.Cast(odt, U_w[vi, vj])
        for i, j in T.grid(C, V):
            with T.sblock("U_store"):
                vi, vj = T.axis.remap("SS", [i, j])
                if vc * C + vi < seq_len:
                    u[bsel, bos + vc * C + vi, vh, vj] = V_s[vi, vj]
        with T.sblock("keep_alive"):
            # reads every shared buffer last, so none is freed early: TVM 0.27's dynamic shared-memory
            # planner (MergeSharedMemoryAllocations) re-lays out a reused buffer when it later coalesces
            # freed blocks, which once put two live buffers of this kernel on top of each other (W = 0 on
            # CUDA). Tk_s is dead here; the write only keeps the read from being removed.
            Tk_s[0, 0] = T.Cast(odt, T.Cast(F32, K_s[0, 0]) + T.Cast(F32, V_s[0, 0]) + L_s[0, 0]
                                + T.Cast(F32, Tv_s[0, 0]) + beta_s[0] + (b_s[0] if gated else zero))

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

def state(st: LinearStatic, *, chunk_size: int, block_v: int, block_k: int | None = None,
          op_dtype: str | None = None, smem: str = "global", acc: str = "global", frag: str = "global",
          solve: str = "global", min_chunks: int = 1, local: bool = False, vt: bool = True):
    """Build the PrimFunc ``main`` of the state pass. ``block_k`` (add rule only) tiles the state's rows:
    its rows never mix there, so key tiles are independent. ``frag``: the scope of the fp32 state and of
    the decayed values (register fragments, "warp", on CUDA); ``solve``: the per-thread scalar e^{b_C}
    ("local" on CUDA). The state starts from ``h0`` [N, H, K, V], or from zero when ``h0`` is empty (no
    initial state: nothing allocated, filled or read), and lives in ``frag`` across the chunk loop; per
    chunk:

        Y = odt(Sᵀ) (one pass from the registers); h[c] = Y (stored transposed, [V, K], a plain copy)
        delta:  V' = U − W·Y  (fp32; stored rounded as ``vn``)
        Vd = odt(V ⊙ d)  with d_l = e^{b_C − b_l} for rows inside the sequence, 0 past its end
                         (gated: d computed in the registers that hold each element, from the
                         chunk's gates; no pass through shared memory, no barrier)
        S = e^{b_C} S + Kᵀ Vd      (computed as Sᵀ = e^{b_C} Sᵀ + Vdᵀ K)

    The chunk tiles are plain copies of clamped rows (the mask is in d), so CUDA can stage them
    asynchronously, chunks ahead. The chunk loop runs at least ``min_chunks`` times (a software
    pipeline of s stages needs a trip count it can prove >= s); the extra iterations of a short or
    empty sequence add nothing and store nothing.

    ``vt`` (delta rule): V' is computed transposed, V'ᵀ = Uᵀ − Y Wᵀ, with Y = odt(Sᵀ) in ``frag`` as the
    A operand, so V'ᵀ lands in the layout of Vdᵀ (the state update's A operand) and the chunk's products
    chain in registers; Y and V' (rounded) go through shared memory only on their way out (h, vn). A
    CUDA tile whose warps own value tiles (``schedules.linear``) takes it. Without it, W·Y reads Y from
    shared memory, V' is decayed in the registers that hold it (its rows' owners) and goes to shared
    memory rounded twice, as V' (for vn) and as Vd, which the update loads transposed as its A operand
    (each warp owning key tiles of the state reads all of Vdᵀ).

    ``local`` (add rule, varlen: part ``state_local``): the first pass of the state recurrence split
    along the sequence. Each tile walks one segment (rows ``seg_rows[p]``, whole chunks of a sequence)
    from a zero state and stores only where it ends, ``ht[p]``, and (gated) the segment's total log
    decay ``gt[p]`` (the sum of its chunks' b_C); no h. ``carry`` then gives every segment its incoming
    state and the plain state pass runs on the segments from those (all segments at once)."""
    _check(st)
    assert not local or (st.rule == "add" and st.varlen), "the segment-local state pass is add-rule, varlen"
    K, V, C, BV, dt = st.key_dim, st.value_dim, chunk_size, block_v, st.dtype
    BK = block_k or K
    odt = op_dtype or dt
    gated, delta, varlen = st.gate != "none", st.rule == "delta", st.varlen
    vt = vt and delta
    assert V % BV == 0 and K % BK == 0 and (BK == K or not delta)
    QB, NS, Tv, Hv, NCv = _axes(st)
    NTt = tirx.Var("NTt", "int32")
    N0 = tirx.Var("N0", "int32")  # h0's sequences: NS, or 0 (no initial state: ``_initial``)
    zero = tirx.const(0.0, F32)
    one = tirx.const(1.0, F32)

    def values(ws, vt_w, j, i):  # the values the state update decays, at (value j, row i), fp32 (vt or add rule)
        return ws[j, i] if vt else T.Cast(F32, vt_w[j, i])

    loads = _state_loads(st, C, BK, BV)
    update = _state_update(st, C, BK, BV)

    def vt_source(v_s, vds_s):  # what Vt_load transposes into the registers: V (add rule) or Vd (delta)
        return vds_s if delta else v_s

    def update_a(vd_w, vt_w):  # the state update's A operand Vdᵀ: loaded as it is (delta, not vt) or decayed
        return vt_w if delta and not vt else vd_w

    def decay(x, b_s, vc, i, seq_len):  # x · d_i (``_decay``)
        return _decay(st, C, x, b_s, vc, i, seq_len)

    # the delta rule's W·Y: WS_w[a, b] = Σ_k A[a, k] B[b, k], A = W, B = Y; with vt its transpose, Y·Wᵀ
    def ws_a(y_w, w_s):
        return y_w if vt else w_s

    def ws_b(w_s, y_s):
        return w_s if vt else y_s

    def u_at(u_s, a, b):  # U at WS_w's (a, b): (row, value), or with vt (value, row)
        return u_s[b, a] if vt else u_s[a, b]

    @T.macro
    def store_vn(c, vn, Vn_s, bsel, vh, vv, bos, seq_len):  # V' out of shared memory, rows inside the sequence
        with T.sblock("vn_store_scope"):
            vc = T.axis.remap("S", [c])
            for i, j in T.grid(C, BV):
                with T.sblock("vn_store"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    if vc * C + vi < seq_len:
                        vn[bsel, bos + vc * C + vi, vh, vv * BV + vj] = Vn_s[vi, vj]

    @T.macro
    def seq(k, v, w, u, gc, h0, h, vn, ht, gt, bsel, vn_, vh, vv, vk0, bos, seq_len, cbase):
        # the state's (key tile, value tile), transposed: Sᵀ = Vdᵀ K has the register operand Vdᵀ as its A
        # operand (the only operand an mma takes from registers, see _tvm.mma_intrins)
        ST_w = T.sblock_alloc_buffer((BV, BK), F32, scope=frag)
        K_s = T.sblock_alloc_buffer((C, BK), odt, scope=smem)
        V_s = T.sblock_alloc_buffer((C, BV), odt, scope=smem)  # V (add) or U (delta)
        W_s = T.sblock_alloc_buffer((C, K) if delta else (1, 1), odt, scope=smem)
        b_s = T.sblock_alloc_buffer((C,) if gated else (1,), F32, scope=acc)
        Y_s = T.sblock_alloc_buffer((1, 1) if local else (BV, BK), odt, scope=smem)  # odt(Sᵀ): h[c], W S's B
        Y_w = T.sblock_alloc_buffer((BV, BK) if vt else (1, 1), odt, scope=frag)  # odt(Sᵀ): Y Wᵀ's A
        eC = T.sblock_alloc_buffer((1,), F32, scope=solve)  # the state's decay e^{b_C} (1 past the end)
        # W·Y (C x BV), or with vt Y·Wᵀ (BV x C); then V' (or V'ᵀ) in place
        WS_w = T.sblock_alloc_buffer(((BV, C) if vt else (C, BV)) if delta else (1, 1), F32, scope=frag)
        Vn_s = T.sblock_alloc_buffer((C, BV) if delta else (1, 1), odt, scope=acc)  # V' (rounded) on its way out
        # (delta, not vt) V' decayed and rounded once, by the warps that formed it: the update's Vdᵀ, loaded
        # transposed by every warp (as the add rule loads Vᵀ)
        Vds_s = T.sblock_alloc_buffer((C, BV) if delta and not vt else (1, 1), odt, scope=acc)
        Vd_w = T.sblock_alloc_buffer((1, 1) if delta and not vt else (BV, C), odt, scope=frag)  # decayed values, ᵀ
        Vt_w = T.sblock_alloc_buffer((1, 1) if vt else (BV, C), odt, scope=frag)  # Vᵀ (add rule) or Vdᵀ (delta)
        gl = T.sblock_alloc_buffer((1,), F32, scope=solve)  # (local) the segment's log decay so far
        for j, kk in T.grid(BV, BK):
            with T.sblock("S_init"):
                vj, vk = T.axis.remap("SS", [j, kk])
                if local:
                    ST_w[vj, vk] = zero
                else:  # (an empty h0: no initial state)
                    ST_w[vj, vk] = _initial(h0, vn_, vh, vk0 * BK + vk, vv * BV + vj)
        if local and gated:
            with T.sblock("g_init"):
                gl[0] = zero
        n_c: T.let = T.ceildiv(seq_len, C)  # a bound var: the pipeline pass compares it symbolically
        for c in T.serial(T.max(n_c, min_chunks)):
            loads(c, k, v, w, u, gc, K_s, W_s, V_s, b_s, bsel, vh, vv, vk0, bos, seq_len)
            if vt:  # Y in the registers (Y Wᵀ's A operand), and in shared memory for h[c]
                with T.sblock("S_cast_scope"):  # (scope blocks: the fragment layout maps a block's own loops)
                    for j, kk in T.grid(BV, BK):
                        with T.sblock("S_cast"):
                            vj, vk = T.axis.remap("SS", [j, kk])
                            Y_w[vj, vk] = T.Cast(odt, ST_w[vj, vk])
                with T.sblock("Y_store_scope"):
                    for j, kk in T.grid(BV, BK):
                        with T.sblock("Y_store"):
                            vj, vk = T.axis.remap("SS", [j, kk])
                            Y_s[vj, vk] = Y_w[vj, vk]
            elif not local:  # (the segment-local pass keeps no h: it has no Y)
                with T.sblock("S_cast_scope"):
                    for j, kk in T.grid(BV, BK):
                        with T.sblock("S_cast"):
                            vj, vk = T.axis.remap("SS", [j, kk])
                            Y_s[vj, vk] = T.Cast(odt, ST_w[vj, vk])
            if not local and not vt:
                for j, kk in T.grid(BV, BK):
                    with T.sblock("h_store"):
                        vc, vj, vk = T.axis.remap("SSS", [c, j, kk])
                        if vc < n_c:
                            h[cbase + vc, vh, vv * BV + vj, vk0 * BK + vk] = Y_s[vj, vk]
            if gated:
                with T.sblock("e_calc"):
                    vc = T.axis.remap("S", [c])
                    eC[0] = T.Select(vc < n_c, _exp(b_s[C - 1]), one)
                if local:
                    with T.sblock("g_acc"):
                        vc = T.axis.remap("S", [c])
                        gl[0] = gl[0] + T.Select(vc < n_c, b_s[C - 1], zero)
            if delta:  # W·Y (or with vt Y·Wᵀ), then V' = U − W Y (V'ᵀ) in place, in the registers
                with T.sblock("WS_scope"):
                    for a, b, kk in T.grid(*WS_w.shape, K):
                        with T.sblock("WS_gemm"):
                            va, vb, vk = T.axis.remap("SSR", [a, b, kk])
                            with T.init():
                                WS_w[va, vb] = zero
                            WS_w[va, vb] = WS_w[va, vb] + (T.Cast(F32, ws_a(Y_w, W_s)[va, vk])
                                                           * T.Cast(F32, ws_b(W_s, Y_s)[vb, vk]))
                with T.sblock("Vn_form_scope"):
                    for a, b, r in T.grid(*WS_w.shape, 1):
                        with T.sblock("Vn_form"):  # in place, written as an extent-1 reduction (bindable)
                            va, vb, vr = T.axis.remap("SSR", [a, b, r])
                            with T.init():
                                WS_w[va, vb] = T.Cast(F32, u_at(V_s, va, vb)) - WS_w[va, vb]
                            WS_w[va, vb] = WS_w[va, vb]
            if delta and not vt:
                # V' (rounded) and Vd (decayed, rounded) to shared memory from the registers that hold V',
                # each element once (a pass that read and wrote shared memory would get a barrier per
                # element: TVM pools the shared buffers before placing them)
                with T.sblock("Vn_calc_scope"):
                    for i, j in T.grid(C, BV):
                        with T.sblock("Vn_calc"):
                            vi, vj = T.axis.remap("SS", [i, j])
                            Vn_s[vi, vj] = T.Cast(odt, WS_w[vi, vj])
                with T.sblock("Vn_decay_scope"):  # (in the registers: a pass reading the gates from shared
                    # memory and writing it would get a barrier per element)
                    vc = T.axis.remap("S", [c])
                    for i, j, r in T.grid(C, BV, 1):
                        with T.sblock("Vn_decay"):  # in place, written as an extent-1 reduction (bindable)
                            vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                            with T.init():
                                WS_w[vi, vj] = decay(WS_w[vi, vj], b_s, vc, vi, seq_len)
                            WS_w[vi, vj] = WS_w[vi, vj]
                with T.sblock("Vds_calc_scope"):
                    for i, j in T.grid(C, BV):
                        with T.sblock("Vds_calc"):
                            vi, vj = T.axis.remap("SS", [i, j])
                            Vds_s[vi, vj] = T.Cast(odt, WS_w[vi, vj])
                store_vn(c, vn, Vn_s, bsel, vh, vv, bos, seq_len)
            if not vt:  # Vᵀ (add rule) or Vdᵀ (delta) into the A operand's registers as it is (CUDA: ldmatrix.trans)
                with T.sblock("Vt_scope"):
                    for i, j in T.grid(C, BV):
                        with T.sblock("Vt_load"):
                            vi, vj = T.axis.remap("SS", [i, j])
                            Vt_w[vj, vi] = vt_source(V_s, Vds_s)[vi, vj]
            if not delta or vt:
                with T.sblock("V_decay_scope"):
                    vc = T.axis.remap("S", [c])
                    for j, i in T.grid(BV, C):
                        with T.sblock("V_decay"):
                            vj, vi = T.axis.remap("SS", [j, i])
                            Vd_w[vj, vi] = T.Cast(odt, decay(values(WS_w, Vt_w, vj, vi), b_s, vc, vi, seq_len))
            update(c, ST_w, update_a(Vd_w, Vt_w), K_s, eC)
            if vt:  # V' rounded into shared memory; it and h[c] stored, after the update (off the chunk's
                # critical path: TVM's barrier planner sees one pool of shared memory, so a write into it
                # between the products would cost two barriers on that path)
                with T.sblock("Vn_calc_scope"):
                    for j, i in T.grid(BV, C):
                        with T.sblock("Vn_calc"):
                            vj, vi = T.axis.remap("SS", [j, i])
                            Vn_s[vi, vj] = T.Cast(odt, WS_w[vj, vi])
                with T.sblock("h_store_scope"):
                    vc = T.axis.remap("S", [c])
                    for j, kk in T.grid(BV, BK):
                        with T.sblock("h_store"):
                            vj, vk = T.axis.remap("SS", [j, kk])
                            if vc < n_c:
                                h[cbase + vc, vh, vv * BV + vj, vk0 * BK + vk] = Y_s[vj, vk]
                store_vn(c, vn, Vn_s, bsel, vh, vv, bos, seq_len)
        for j, kk in T.grid(BV, BK):
            with T.sblock("ht_store"):
                vj, vk = T.axis.remap("SS", [j, kk])
                ht[vn_, vh, vk0 * BK + vk, vv * BV + vj] = ST_w[vj, vk]
        if local and gated:
            with T.sblock("gt_store"):  # every thread holds the sum; the head's first tile stores it
                if vv + vk0 == 0:
                    gt[vn_, vh] = gl[0]

    if local:
        @T.prim_func(s_tir=True)
        def main_local(k: T.Buffer((QB, Tv, Hv, K), dt), v: T.Buffer((QB, Tv, Hv, V), dt),
                       gc: T.Buffer((QB, Tv, Hv) if gated else (1,), F32), seg_rows: T.Buffer((NS, 2), "int32"),
                       ht: T.Buffer((NS, Hv, K, V), F32), gt: T.Buffer((NS, Hv) if gated else (1,), F32)):
            T.func_attr({"global_symbol": "main", "tirx.noalias": True})
            for n, hh, jv, jk in T.grid(NS, Hv, V // BV, K // BK):
                with T.sblock("tile"):
                    vn_, vh, vv, vk0 = T.axis.remap("SSSS", [n, hh, jv, jk])
                    T.reads(*([k[0:QB, 0:Tv, vh, 0:K], v[0:QB, 0:Tv, vh, 0:V], seg_rows[vn_, 0:2]]
                              + ([gc[0:QB, 0:Tv, vh]] if gated else [])))
                    T.writes(*([ht[vn_, vh, 0:K, 0:V]] + ([gt[vn_, vh]] if gated else [])))
                    bos: T.let = seg_rows[vn_, 0]
                    seq(k, v, v, v, gc, ht, ht, ht, ht, gt, 0, vn_, vh, vv, vk0, bos, seg_rows[vn_, 1] - bos, 0)

        return _keep_params(main_local, signature(st, "state_local"))

    @T.prim_func(s_tir=True)
    def main(k: T.Buffer((QB, Tv, Hv, K), dt), v: T.Buffer((QB, Tv, Hv, V), dt),
             w: T.Buffer((QB, Tv, Hv, K) if delta else (1,), odt), u: T.Buffer((QB, Tv, Hv, V) if delta else (1,), odt),
             gc: T.Buffer((QB, Tv, Hv) if gated else (1,), F32), h0: T.Buffer((N0, Hv, K, V), F32),
             cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"),
             chunk_offsets: T.Buffer((NCv,) if varlen else (1,), "int32"),
             h: T.Buffer((NTt, Hv, V, K), odt), vn: T.Buffer((QB, Tv, Hv, V) if delta else (1,), odt),
             ht: T.Buffer((NS, Hv, K, V), F32)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for n, hh, jv, jk in T.grid(NS, Hv, V // BV, K // BK):
            with T.sblock("tile"):
                vn_, vh, vv, vk0 = T.axis.remap("SSSS", [n, hh, jv, jk])
                T.reads(*([k[0:QB, 0:Tv, vh, 0:K], h0[vn_, vh, 0:K, 0:V]]
                          + ([w[0:QB, 0:Tv, vh, 0:K], u[0:QB, 0:Tv, vh, 0:V]] if delta else [v[0:QB, 0:Tv, vh, 0:V]])
                          + ([gc[0:QB, 0:Tv, vh]] if gated else [])
                          + ([cu_seqlens[0:NCv], chunk_offsets[0:NCv]] if varlen else [])))
                T.writes(*([h[0:NTt, vh, 0:V, 0:K], ht[vn_, vh, 0:K, 0:V]]
                           + ([vn[0:QB, 0:Tv, vh, 0:V]] if delta else [])))
                if varlen:
                    bos: T.let = cu_seqlens[vn_]
                    seq(k, v, w, u, gc, h0, h, vn, ht, ht, 0, vn_, vh, vv, vk0, bos, cu_seqlens[vn_ + 1] - bos,
                        chunk_offsets[vn_])
                else:
                    seq(k, v, w, u, gc, h0, h, vn, ht, ht, vn_, vn_, vh, vv, vk0, 0, Tv, vn_ * T.ceildiv(Tv, C))

    return _keep_params(main, signature(st, "state"))


def carry(st: LinearStatic):
    """Build the PrimFunc ``main`` of the segments' carry (part ``carry``), between the two passes of a
    state recurrence split along the sequence: one thread per (sequence, head, key, value) walks the
    sequence's segments (``seg_offsets`` [N + 1]: its segments are ``seg_offsets[n] ..
    seg_offsets[n + 1] - 1``; ``state_local`` computed all but the last one of each, as rows
    ``p = seg_offsets[n] − n + i``) and gives each its incoming state (fp32):

        hin[first] = h0[n],   hin[next] = e^{gt[p]} · hin[this] + ht_local[p]

    (the add rule's state after a segment is its decayed incoming state plus what the segment adds)."""
    _check(st)
    assert st.rule == "add"
    K, V = st.key_dim, st.value_dim
    gated = st.gate != "none"
    Hv, NC, NP, NG, N0 = (tirx.Var(x, "int32") for x in ("H", "NC", "NP", "NG", "N0"))

    @T.prim_func(s_tir=True)
    def main(ht_local: T.Buffer((NP, Hv, K, V), F32),
             gt: T.Buffer((NP, Hv) if gated else (1,), F32), h0: T.Buffer((N0, Hv, K, V), F32),
             seg_offsets: T.Buffer((NC,), "int32"), hin: T.Buffer((NG, Hv, K, V), F32)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for n, hh, kk, jv in T.grid(NC - 1, Hv, K, V):  # (the sequences: seg_offsets has N + 1 entries)
            with T.sblock("tile"):
                vn_, vh, vk, vj = T.axis.remap("SSSS", [n, hh, kk, jv])
                T.reads(ht_local[0:NP, vh, vk, vj], h0[vn_, vh, vk, vj], seg_offsets[vn_:vn_ + 2],
                        *([gt[0:NP, vh]] if gated else []))
                T.writes(hin[0:NG, vh, vk, vj])
                run = T.sblock_alloc_buffer((1,), F32, scope="local")  # the state entering the next segment
                first: T.let = seg_offsets[vn_]
                run[0] = _initial(h0, vn_, vh, vk, vj)
                hin[first, vh, vk, vj] = run[0]
                for i in T.serial(seg_offsets[vn_ + 1] - first - 1):
                    if gated:
                        run[0] = _exp(gt[first - vn_ + i, vh]) * run[0] + ht_local[first - vn_ + i, vh, vk, vj]
                    else:
                        run[0] = run[0] + ht_local[first - vn_ + i, vh, vk, vj]
                    hin[first + i + 1, vh, vk, vj] = run[0]

    return _keep_params(main, signature(st, "carry"))


# ------------------------------------------------------------------------------------------------
# the gates' chunk-local cumulative sum (every kernel's b), per (chunk, head[, key channel])
# ------------------------------------------------------------------------------------------------

def gate_cumsum(st: LinearStatic, *, chunk_size: int):
    """Build the PrimFunc ``main`` of the chunk-local cumulative log decay (part ``cumsum``), the ``gc``
    every other kernel reads: one thread per (chunk, head[, key channel]) sums its chunk's rows in order
    from the chunk's first row, in fp32,

        gc[r] = Σ_{r' = first row of r's chunk .. r} g[r']

    (chunks of ``chunk_size`` rows counted from each sequence's start; ``chunk_indices`` as for prep and
    output when varlen). Scalar gates [B, T, H] and gla's per-key gates [B, T, H, K], read in their own
    dtype (``st.dtype`` is the gate's here); only rows inside a sequence are written. Consecutive
    threads take consecutive heads (and key channels), so every row step reads and writes contiguous
    memory. A thread issues its chunk's loads before it sums (unrolled, in registers) and computes its
    coordinates once: loading as it summed, with four divisions by the symbolic sizes per row, took
    41 us at every anchor shape on an H200 (fla's cumsum: 5-8)."""
    assert st.gate in ("scalar", "vector"), f"{st.op} has no gate"
    C, varlen = chunk_size, st.varlen
    QB, NS, Tv, Hv, NCv = _axes(st)
    NTt = tirx.Var("NTt", "int32")
    KG = st.key_dim if st.gate == "vector" else 1  # gate channels per head

    @T.macro
    def body(g, gc, bsel, vh, vk, vc, bos, seq_len):
        rows = T.sblock_alloc_buffer((C,), F32, scope="local")
        run = T.sblock_alloc_buffer((1,), F32, scope="local")
        # the tile's coordinates, its chunk's first row and its number of rows inside the sequence,
        # computed once into registers: lowering substitutes the tile's coordinates into every use, a
        # division by the symbolic head count and chunk count per row (a let is substituted as well)
        at = T.sblock_alloc_buffer((5,), "int32", scope="local")
        at[0] = bsel
        at[1] = bos + vc * C
        at[2] = T.min(seq_len - vc * C, C)
        at[3] = vh
        at[4] = vk
        for i in T.unroll(C):  # every load first, all in flight (rows clamped as ``_clamped``: in bounds)
            if KG == 1:
                rows[i] = T.Cast(F32, g[at[0], T.max(at[1] + T.min(i, at[2] - 1), 0), at[3]])
            else:
                rows[i] = T.Cast(F32, g[at[0], T.max(at[1] + T.min(i, at[2] - 1), 0), at[3], at[4]])
        run[0] = tirx.const(0.0, F32)
        for i in T.unroll(C):
            run[0] = run[0] + rows[i]
            if i < at[2]:
                if KG == 1:
                    gc[at[0], at[1] + i, at[3]] = run[0]
                else:
                    gc[at[0], at[1] + i, at[3], at[4]] = run[0]

    gshape = _gate_shape(st, QB, Tv, Hv)

    @T.prim_func(s_tir=True)
    def main(g: T.Buffer(gshape, st.dtype), cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"),
             chunk_indices: T.Buffer((NTt, 2) if varlen else (1, 2), "int32"), gc: T.Buffer(gshape, F32)):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for ci, h, kk in T.grid(_chunk_grid(st, C, QB, Tv, NTt), Hv, KG):
            with T.sblock("tile"):
                vci, vh, vk = T.axis.remap("SSS", [ci, h, kk])
                T.reads(*([g[0:QB, 0:Tv, vh] if KG == 1 else g[0:QB, 0:Tv, vh, vk]]
                          + ([cu_seqlens[0:NCv], chunk_indices[vci, 0:2]] if varlen else [])))
                T.writes(gc[0:QB, 0:Tv, vh] if KG == 1 else gc[0:QB, 0:Tv, vh, vk])
                if varlen:
                    seq: T.let = chunk_indices[vci, 0]
                    bos: T.let = cu_seqlens[seq]
                    body(g, gc, 0, vh, vk, chunk_indices[vci, 1], bos, cu_seqlens[seq + 1] - bos)
                else:
                    nt: T.let = T.ceildiv(Tv, C)
                    body(g, gc, vci // nt, vh, vk, vci % nt, 0, Tv)

    return _keep_params(main, signature(st, "cumsum"))


# ------------------------------------------------------------------------------------------------
# output: every (chunk, head, value tile) in parallel
# ------------------------------------------------------------------------------------------------

def output(st: LinearStatic, *, chunk_size: int, block_v: int, op_dtype: str | None = None,
           smem: str = "global", acc: str = "global", frag: str = "global"):
    """Build the PrimFunc ``main`` of the output pass (values: ``v`` for the add rule, V' for delta):

        O = e^{b} ⊙ (Q h[c]) + odt((Q Kᵀ) ⊙ Γ) V,   stored as scale · O

    with the products in ``frag`` (register fragments on CUDA); the tile goes out through shared
    memory (``O_s``) so the stores are whole rows. Tiles are plain copies of clamped rows:
    Γ is 0 above the diagonal, so a row inside the sequence never sees a row past its end, and rows
    past the end are not stored."""
    _check(st)
    K, V, C, BV, dt = st.key_dim, st.value_dim, chunk_size, block_v, st.dtype
    odt = op_dtype or dt
    gated, delta = st.gate != "none", st.rule == "delta"
    assert V % BV == 0
    zero = tirx.const(0.0, F32)

    tail = _output_tail(st, chunk_size=C, block_v=BV)

    @T.macro
    def body(q, k, v, vn, gc, h, o, scale, bsel, vh, vv, vc, bos, seq_len, cidx):
        Q_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)
        K_s = T.sblock_alloc_buffer((C, K), odt, scope=smem)
        H_s = T.sblock_alloc_buffer((BV, K), odt, scope=smem)  # h[c]ᵀ
        V_s = T.sblock_alloc_buffer((C, BV), odt, scope=smem)
        b_s = T.sblock_alloc_buffer((C,) if gated else (1,), F32, scope=acc)
        O_w = T.sblock_alloc_buffer((C, BV), F32, scope=frag)
        A_w = T.sblock_alloc_buffer((C, C), F32, scope=frag)
        P_w = T.sblock_alloc_buffer((C, C), odt, scope=frag)
        O_s = T.sblock_alloc_buffer((C, BV), dt, scope=smem)  # the output tile, stored with 16-byte vectors
        for i, kk in T.grid(C, K):
            with T.sblock("Q_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                Q_s[vi, vk] = q[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk]
        for i, kk in T.grid(C, K):
            with T.sblock("K_load"):
                vi, vk = T.axis.remap("SS", [i, kk])
                K_s[vi, vk] = k[bsel, _clamped(bos, vc * C + vi, seq_len), vh, vk]
        for j, kk in T.grid(BV, K):
            with T.sblock("H_load"):
                vj, vk = T.axis.remap("SS", [j, kk])
                H_s[vj, vk] = h[cidx, vh, vv * BV + vj, vk]
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
                    O_w[vi, vj] = O_w[vi, vj] + T.Cast(F32, Q_s[vi, vk]) * T.Cast(F32, H_s[vj, vk])
        if gated:
            with T.sblock("O_decay_scope"):
                for i, j, r in T.grid(C, BV, 1):
                    with T.sblock("O_decay"):  # in place, written as an extent-1 reduction (bindable)
                        vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                        with T.init():
                            O_w[vi, vj] = O_w[vi, vj] * _exp(b_s[vi])
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
                    P_w[vi, vj] = T.Cast(odt, T.Select(vj <= vi, A_w[vi, vj] * _exp(b_s[vi] - b_s[vj]), zero))
                else:
                    P_w[vi, vj] = T.Cast(odt, T.Select(vj <= vi, A_w[vi, vj], zero))
        tail(P_w, V_s, O_w, O_s, o, scale, bsel, vh, vv, vc, bos, seq_len)

    return _keep_params(_output_main(st, chunk_size=C, block_v=BV, op_dtype=odt, body=body), signature(st, "output"))


def _output_main(st: LinearStatic, *, chunk_size: int, block_v: int, op_dtype: str, body):
    """The output kernel's PrimFunc (this module's and ``split_gla``'s): one tile per (chunk, head, value
    tile), its rows located (dense or varlen), then ``body`` (a macro taking q, k, v, vn, gc, h, o,
    scale, batch row, head, value tile, chunk of the sequence, sequence start, length, chunk row of h)."""
    K, V, C, BV, dt, odt = st.key_dim, st.value_dim, chunk_size, block_v, st.dtype, op_dtype
    gated, vector, delta, varlen = st.gate != "none", st.gate == "vector", st.rule == "delta", st.varlen
    QB, NS, Tv, Hv, NCv = _axes(st)
    NTt = tirx.Var("NTt", "int32")
    gc_shape = (QB, Tv, Hv, K) if vector else (QB, Tv, Hv) if gated else (1,)
    h_shape = (NTt, Hv, K, V) if vector else (NTt, Hv, V, K)  # gla's state is [K, V]

    @T.prim_func(s_tir=True)
    def main(q: T.Buffer((QB, Tv, Hv, K), dt), k: T.Buffer((QB, Tv, Hv, K), dt),
             v: T.Buffer((QB, Tv, Hv, V), dt), vn: T.Buffer((QB, Tv, Hv, V), odt),
             gc: T.Buffer(gc_shape, F32), h: T.Buffer(h_shape, odt),
             cu_seqlens: T.Buffer((NCv,) if varlen else (1,), "int32"),
             chunk_indices: T.Buffer((NTt, 2) if varlen else (1, 2), "int32"),
             o: T.Buffer((QB, Tv, Hv, V), dt), scale: T.float32):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for ci, hh, jv in T.grid(_chunk_grid(st, C, QB, Tv, NTt), Hv, V // BV):
            with T.sblock("tile"):
                vci, vh, vv = T.axis.remap("SSS", [ci, hh, jv])
                T.reads(*([q[0:QB, 0:Tv, vh, 0:K], k[0:QB, 0:Tv, vh, 0:K],
                           h[0:NTt, vh, 0:K, 0:V] if vector else h[0:NTt, vh, 0:V, 0:K]]
                          + ([vn[0:QB, 0:Tv, vh, 0:V]] if delta else [v[0:QB, 0:Tv, vh, 0:V]])
                          + ([gc[0:QB, 0:Tv, vh, 0:K]] if vector else [gc[0:QB, 0:Tv, vh]] if gated else [])
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

    return main


def _output_tail(st: LinearStatic, *, chunk_size: int, block_v: int):
    """The output kernels' last steps (this module's and ``split_gla``'s), a macro: O += P V (P, the
    masked scores, in the operand dtype), rounded once as scale · O into ``O_s``, whose rows inside the
    sequence are stored."""
    C, BV, dt = chunk_size, block_v, st.dtype

    @T.macro
    def tail(P_w, V_s, O_w, O_s, o, scale, bsel, vh, vv, vc, bos, seq_len):
        with T.sblock("O_scope"):
            for i, j, l in T.grid(C, BV, C):
                with T.sblock("O_gemm"):
                    vi, vj, vl = T.axis.remap("SSR", [i, j, l])
                    with T.init():
                        O_w[vi, vj] = O_w[vi, vj]
                    O_w[vi, vj] = O_w[vi, vj] + T.Cast(F32, P_w[vi, vl]) * T.Cast(F32, V_s[vl, vj])
        with T.sblock("O_cast_scope"):
            for i, j in T.grid(C, BV):
                with T.sblock("O_cast"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    O_s[vi, vj] = T.Cast(dt, O_w[vi, vj] * scale)
        for i, j in T.grid(C, BV):
            with T.sblock("O_store"):
                vi, vj = T.axis.remap("SS", [i, j])
                if vc * C + vi < seq_len:
                    o[bsel, bos + vc * C + vi, vh, vv * BV + vj] = O_s[vi, vj]

    return tail
