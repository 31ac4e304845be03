"""Schedules of the flash forward compute (``tvm_attn.ops.flash.compute``).

CUDA (sm_80+, tuned for sm_90a): the FlashAttention-2 structure on ``mma.sync.m16n8k16``. Q, K and V
tiles are staged in dynamic shared memory (16-byte ``cp.async`` copies, K/V double-buffered by the
software pipeline); S = Q Kᵀ and O += P V run on tensor cores through ldmatrix fragments; S, P, O and the
row statistics live in registers (warp scope, mma fragment layout); the row reductions are a per-lane
pass plus quad shuffles; P feeds the second mma as its A operand without leaving registers.

The design space has two kinds of knobs:

* compute variants (``FlashVariant``: query tile, key tile, pipeline depth) that change buffer shapes or
  the pipeline annotation: one tuning task each;
* sampled decisions inside a variant: the warp split of the query tile (``sample_perfect_tile``), the
  copy vector width and the unroll depth (``sample_categorical``).

``apply_cuda(sch, variant)`` replays the default decision; ``cuda_space(variant)`` returns the
MetaSchedule space function.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm_attn._tvm import Schedule, fragment_map, mma_intrins
from tvm_attn.ops.flash.compute import FlashTiles


@dataclass(frozen=True)
class FlashVariant:
    """Compute-level choices of the CUDA kernel (each is its own tuning task)."""

    block_m: int = 128
    block_n: int = 64
    stages: int = 1  # 0: synchronous K/V copies; 1: double buffer; 2: triple buffer
    warps: int = 4  # default decision of the warp split (a sampled knob)
    vec: int = 8  # default copy width in elements (a sampled knob)

    @property
    def tiles(self) -> FlashTiles:
        return FlashTiles(self.block_m, self.block_n, min_kv_tiles=self.stages)

    @property
    def key(self) -> str:
        return f"m{self.block_m}n{self.block_n}s{self.stages}"


# default decisions per head dim: the largest tiles whose fragments fit in 255 registers without spilling
# (ptxas -v on sm_90a, bf16, causal); tuned records replace them per GPU
DEFAULT_VARIANTS: dict[int, FlashVariant] = {
    64: FlashVariant(block_m=128, block_n=64, stages=1, warps=4),
    128: FlashVariant(block_m=128, block_n=64, stages=1, warps=4),
    256: FlashVariant(block_m=64, block_n=32, stages=1, warps=4),
}

# the compute variants the tuner explores per head dim (one MetaSchedule task each). Three-stage K/V
# pipelines are left out: InjectSoftwarePipeline guards their two-tile prologue with a branch on the
# symbolic trip count, inside which the barrier pass refuses to insert __syncthreads.
VARIANT_SPACE: dict[int, tuple[FlashVariant, ...]] = {
    64: tuple(FlashVariant(m, n, 1) for m in (64, 128) for n in (32, 64, 128)),
    128: tuple(FlashVariant(m, n, s) for m in (64, 128) for n in (32, 64) for s in (0, 1)),
    256: tuple(FlashVariant(64, n, 1) for n in (32, 64)),
}

# statements in the body of the key-tile loop once both reductions are decomposed:
# K load, V load, S init, S mma, S mask, row pmax, row max (2 steps), reference max, P exp, row sum,
# P cast, O rescale, O init, O mma, m update
_KV_BODY = 16


def _imap(i, j):
    # (row, col) -> (row tile, col tile, lane, register) of the mma fragment
    return (i // 16, j // 16, *fragment_map(i % 16, j % 16))


def _smap(i, q):
    # row statistics [row, quad lane] -> (row tile, lane, row half)
    return (i // 16, 4 * (i % 8) + q, (i % 16) // 8)


def _read_index(sch: Schedule, blk, name: str) -> int:
    for n, region in enumerate(sch.get(blk).reads):
        if region.source.name == name:
            return n
    raise KeyError(name)


def detach(sch: Schedule) -> None:
    """Give the schedule its own copy of every block before transforming anything.

    TVM 0.27's copy-on-write judges a block by the block node alone, not by the SBlockRealize that
    holds it; once an ancestor has been copied, a nested block's realize is shared with the original
    function while the block looks unique, and the next transformation inside it mutates the original
    in place. MetaSchedule replays every candidate on the same task function, so that corrupts
    tuning. Re-creating each block top-down (an annotate / unannotate pair) makes every block on the
    schedule's tree its own.
    """
    frontier = [sch.get_sblock("root")]
    while frontier:
        children = [c for b in frontier for c in sch.get_child_blocks(b)]
        for c in children:
            sch.annotate(c, "tvm_attn.detach", 1)
            sch.unannotate(c, "tvm_attn.detach")
        frontier = children


def apply_cuda(sch: Schedule, variant: FlashVariant, dtype: str, *, tunable: bool = False) -> None:
    """Schedule ``sch`` (a flash forward PrimFunc built with ``variant``'s tiles, smem "shared.dyn",
    warp "warp") for tensor cores. ``tunable`` samples the knobs instead of taking the defaults."""
    detach(sch)
    BM, BN = variant.block_m, variant.block_n
    intrin = mma_intrins(dtype)
    mt = BM // 16
    b, h, qt = sch.get_loops("tile")
    sch.bind(qt, "blockIdx.x")
    sch.bind(h, "blockIdx.y")
    sch.bind(b, "blockIdx.z")

    # ---- warps own whole 16-row tiles of the query tile: a perfect tiling of BM/16 ----
    s_blk = sch.get_sblock("S_gemm")
    i, j, k = sch.get_loops(s_blk)[-3:]
    i, i_tc = sch.split(i, [None, 16])
    j, j_tc = sch.split(j, [None, 16])
    k, k_tc = sch.split(k, [None, 16])
    sch.reorder(i, j, k, i_tc, j_tc, k_tc)
    s_outer = sch.blockize(i_tc)
    warps_default = min(variant.warps, mt)
    nw, per_warp = sch.sample_perfect_tile(
        i, n=2, max_innermost_factor=mt, decision=None if tunable else [warps_default, mt // warps_default])
    vec = sch.sample_categorical([4, 8], [0.5, 0.5], decision=None if tunable else [4, 8].index(variant.vec))

    for name in ("Q_load", "K_load", "V_load"):
        blk = sch.get_sblock(name)
        f = sch.fuse(*sch.get_loops(blk)[-2:])
        _, ty, tx, vv = sch.split(f, [None, nw, 32, vec])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vv)
        sch.storage_align(blk, 0, axis=-2, factor=32, offset=8)

    def warp_gemm(blk, outer, iloop, jloop, kloop, a_name, b_name):
        iw, ii = sch.split(iloop, [nw, per_warp])
        sch.reorder(iw, ii, jloop, kloop)
        sch.bind(iw, "threadIdx.y")
        # k outermost, then the B operand's column tiles: one B fragment (4 registers) is live at a
        # time instead of a whole k-slice of them, which keeps hd128's O + S + operands under 255
        sch.reorder(kloop, jloop, ii)
        caches = []
        for name, at in ((a_name, kloop), (b_name, jloop)):
            if name is None:
                continue
            c = sch.cache_read(outer, _read_index(sch, outer, name), "warp")
            sch.compute_at(c, at)
            caches.append(c)
        return caches

    def fragment_loops(blk):
        a, c = sch.get_loops(blk)[-2:]
        a0, a1 = sch.split(a, [None, 16])
        c0, c1 = sch.split(c, [None, 16])
        sch.reorder(a0, c0, a1, c1)
        return a1

    # ---- S = Q Kᵀ straight into the warp-scope S_w ----
    qa, kb = warp_gemm(s_blk, s_outer, i, j, k, "Q_s", "K_s")
    la, lb = fragment_loops(qa), fragment_loops(kb)
    sch.transform_layout(qa, ("write", 0), _imap)
    sch.transform_layout(kb, ("write", 0), _imap)
    sch.transform_layout(s_outer, ("write", 0), _imap)
    sch.tensorize(la, intrin["load_a"])
    sch.tensorize(lb, intrin["load_b_nk"])
    sch.decompose_reduction(s_outer, k)
    sch.tensorize(sch.get_loops(s_blk)[-3], intrin["mma_b_nk"])
    _bind_fragment_init(sch, "S_gemm_init")

    # ---- O += P V, P_w (registers, fragment layout) as the A operand ----
    o_blk = sch.get_sblock("O_gemm")
    i, j, k = sch.get_loops(o_blk)[-3:]
    i, i_tc = sch.split(i, [None, 16])
    j, j_tc = sch.split(j, [None, 16])
    k, k_tc = sch.split(k, [None, 16])
    sch.reorder(i, j, k, i_tc, j_tc, k_tc)
    o_outer = sch.blockize(i_tc)
    (vb,) = warp_gemm(o_blk, o_outer, i, j, k, None, "V_s")
    lb = fragment_loops(vb)
    sch.transform_layout(vb, ("write", 0), _imap)
    sch.transform_layout(o_outer, ("write", 0), _imap)
    sch.transform_layout(o_outer, ("read", _read_index(sch, o_outer, "P_w")), _imap)
    sch.tensorize(lb, intrin["load_b_kn"])
    sch.decompose_reduction(o_outer, k)
    sch.tensorize(sch.get_loops(o_blk)[-3], intrin["mma"])
    _bind_fragment_init(sch, "O_gemm_init")

    # ---- softmax state and epilogue in fragment space: lane -> threadIdx.x, row tiles over warps ----
    for buf_block in ("row_pmax", "m_init", "row_max", "row_max2", "l_init", "l_final"):
        sch.transform_layout(sch.get_sblock(buf_block), ("write", 0), _smap)

    def bind_rows(blk, tile_loop, lane, *rest):
        aw, ai = sch.split(tile_loop, [nw, None])
        sch.reorder(aw, lane, ai, *rest)
        sch.bind(aw, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        for lp in (ai, *rest):  # register arrays need compile-time indices
            sch.unroll(lp)

    for name in ("O_init", "P_cast", "O_store"):
        blk = sch.get_sblock(name)
        sch.transform_block_layout(blk, _imap)
        a, c, lane, loc = sch.get_loops(blk)[-4:]
        bind_rows(blk, a, lane, c, loc)
    for name in ("O_rescale", "S_mask", "P_exp"):
        blk = sch.get_sblock(name)
        sch.transform_block_layout(blk, lambda i, j, r: (*_imap(i, j), r))
        a, c, lane, loc, _ = sch.get_loops(blk)[-5:]
        bind_rows(blk, a, lane, c, loc)
    # O_rescale skips rows whose reference max stayed: put the fragment's row half (bit 1 of the
    # register index) above the column loops, so the row test is hoisted out of them
    blk = sch.get_sblock("O_rescale")
    c, loc = sch.get_loops(blk)[-3:-1]
    col_hi, half, col_lo = sch.split(loc, [2, 2, 2])
    sch.reorder(half, c, col_hi, col_lo)
    for lp in (half, col_hi, col_lo):
        sch.unroll(lp)
    for name in ("m_init", "l_init", "row_max", "row_max2", "m_update", "l_final", "lse_store"):
        blk = sch.get_sblock(name)
        sch.transform_block_layout(blk, _smap)
        a, lane, hf = sch.get_loops(blk)[-3:]
        bind_rows(blk, a, lane, hf)
    blk = sch.get_sblock("row_ref")
    sch.transform_block_layout(blk, lambda i, q, r: (*_smap(i, q), r))
    a, lane, hf, r = sch.get_loops(blk)[-4:]
    bind_rows(blk, a, lane, hf, r)
    for name in ("row_pmax", "row_sum"):
        blk = sch.get_sblock(name)
        sch.transform_block_layout(blk, lambda i, q, jo, e: (*_smap(i, q), jo, e))
        a, lane, hf, jo, e = sch.get_loops(blk)[-5:]
        bind_rows(blk, a, lane, hf, jo, e)

    if variant.stages:
        kt = next(lp for lp in sch.get_loops("S_scope") if sch.get(lp).loop_var.name == "kt")
        sch.annotate(kt, "software_pipeline_stage", [0, 0] + [variant.stages] * (_KV_BODY - 2))
        sch.annotate(kt, "software_pipeline_order", list(range(_KV_BODY)))
        sch.annotate(kt, "software_pipeline_async_stages", [0])


def _bind_fragment_init(sch: Schedule, name: str) -> None:
    # zero-fill of an mma accumulator, one lane per threadIdx.x (mma_fill's offsets miss the lane term)
    blk = sch.get_sblock(name)
    sch.transform_block_layout(blk, lambda i, j: fragment_map(i, j))
    sch.bind(sch.get_loops(blk)[-2], "threadIdx.x")


def cuda_space(variant: FlashVariant, dtype: str):
    """MetaSchedule space function over one variant: the warp split and the copy width are sampled."""

    def space(sch: Schedule) -> None:
        apply_cuda(sch, variant, dtype, tunable=True)

    return space


def cpu_space(sch: Schedule) -> None:
    """MetaSchedule space function of the LLVM schedule."""
    apply_cpu(sch, tunable=True)


def apply_cpu(sch: Schedule, *, tunable: bool = False) -> None:
    """LLVM schedule: one (sequence, head, query tile) per task in parallel, inner loops vectorised.

    Knobs (``tunable``): the vector width of the softmax exponentials (a split of P's columns) and the
    unroll depth of the tile body."""
    detach(sch)
    b, h, qt = sch.get_loops("tile")
    sch.parallel(sch.fuse(b, h, qt))
    for name in ("Q_load", "V_load", "O_init", "O_store"):
        blk = sch.get_sblock(name)
        sch.vectorize(sch.get_loops(blk)[-1])
    p_blk = sch.get_sblock("P_exp")
    j = sch.get_loops(p_blk)[-2]  # (i, j, r): r is the one-element reduction of the in-place update
    n = sch.get(j).extent.value
    factors = sch.sample_perfect_tile(j, n=2, max_innermost_factor=16,
                                      decision=None if tunable else [n // min(n, 16), min(n, 16)])
    sch.vectorize(sch.split(j, factors)[1])
    unroll = sch.sample_categorical([0, 16, 64], [1 / 3] * 3, decision=None if tunable else 0)
    sch.annotate(sch.get_sblock("tile"), "meta_schedule.unroll_explicit", unroll)
    # S[i, j] += Q[i, k] K[j, k] and O[i, d] += P[i, k] V[k, d]: the reduction outside the output column,
    # so the innermost loop is an axpy over a row that LLVM vectorises
    sch.transform_layout(sch.get_sblock("K_load"), ("write", 0), lambda j, d: (d, j))  # Kᵀ: rows contiguous in j
    for name in ("S_gemm", "O_gemm"):
        blk = sch.get_sblock(name)
        i, j, k = sch.get_loops(blk)[-3:]
        sch.decompose_reduction(blk, i)
        sch.reorder(i, k, j)
