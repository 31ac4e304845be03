"""Schedules of the linear-attention computes (``tvm_attn.ops.linear.compute``).

CPU (``apply_cpu``): one (sequence, head, value tile[, query tile]) per parallel task; matmuls with the
reduction outside the output column, so the innermost loop is a row axpy that LLVM's loop vectoriser
takes (``sch.vectorize`` refuses a reduction update once its init is split off).

CUDA:

* chunk forms (``apply_cuda_chunk``): one CTA per (sequence, head, value tile) walks the chunks in
  order. The chunk's tiles live in dynamic shared memory; every matrix product of a chunk (Q Kᵀ and
  K Kᵀ, K·S, the WY product Tm·(β(V − eᵇ K S)), the output [eᵇQ | P]·[S; U] and the state update
  (K ⊙ decay)ᵀ·U) runs on tensor cores: ``mma.sync.m16n8k16`` fed by ldmatrix, accumulated in
  registers (warp scope) and stored to shared memory as fp32. Element-wise steps, the gate cumsum, gla's
  gated scores and the triangular solve (one column per thread, in registers) run on CUDA cores.
  Knobs (MetaSchedule decisions when ``tunable``, see ``cuda_space``): the warp count, a perfect tiling
  of the smallest product's 16-row tiles (``sample_perfect_tile``: warps own row tiles of every
  product), and the unroll depth of the chunk loop (``sample_categorical``); the value tile is a
  compute-level variant, its own task, as in flash.
* the split chunk form (``apply_cuda_chunk_part``; ``ops/linear/split.py``, the CUDA chunk path of
  linear_attention, simple_gla, delta_rule, gated_delta_rule), built like the flash kernel: chunk tiles
  copied into shared memory as 16-byte vectors, every matrix product on ``mma.sync`` with its result in
  registers (``_Fragments``), element-wise steps on the fragments in place, lane by lane. prep (one CTA
  per (chunk, head)): K Kᵀ and its mask in registers, the solve one column per thread fully unrolled
  (the column in registers), Tm diag(β eᵇ)·K and Tm diag(β)·V; state (one CTA per (sequence, head,
  value tile[, key tile])): the transposed state in registers for the whole chunk loop, the next
  chunks' tiles fetched by cp.async while this one computes (a software pipeline of ``stages``), the
  delta rule's W·S and Vdᵀ·K on tensor cores. Add rule: warps own 16-row (value) tiles of the state and
  load their rows of Vᵀ by ldmatrix.trans, decayed in registers (the decays e^{b_C − b} computed in the
  lanes that hold them); delta rule: where warps own value tiles, V'ᵀ = Uᵀ − odt(Sᵀ) Wᵀ in registers
  (the rounded state an A operand, V'ᵀ in the layout of Vdᵀ), else (one value tile, 2 warps) warps own
  16-column (key) tiles and every warp computes all of Vdᵀ from V' (fp32, shared). Two tilings of the
  add rule's kernel, picked per call by how many (sequence, head) pairs there are (``SPLIT_TILINGS``); output (one CTA per (chunk, head, value
  tile)): Q·h, Q Kᵀ and P·V, P passed to the last product in registers. Results that leave a kernel
  (h, V', W, U, O) go through shared memory and out as 16-byte row vectors (a register fragment holds
  2-element pieces of 8 rows: stored directly they cost 4x the L2 sectors, which bounded the state
  kernel). Tiles and the pipeline depth are compute-level variants (``DEFAULT_SPLIT_VARIANTS``); the
  warp count is a ``sample_perfect_tile`` knob in each.
* the fused state and output kernel (``apply_cuda_chunk_fused``; ``ops/linear/split_fused.py``, dispatched
  for many (sequence, head) pairs): the state kernel's CTA and register state, plus per chunk Oᵀ = Y Qᵀ
  and Vᵀ Pᵀ with warps owning value tiles (their A operands in registers), Q Kᵀ with warps owning chunk
  tiles (P through shared memory); no h or V' leaves the kernel.
* gla's split kernels (``apply_cuda_chunk_state_gla`` / ``apply_cuda_chunk_output_gla``;
  ``ops/linear/split_gla.py``): the state [key, value] in registers, warps owning its 16-row key tiles,
  the decayed keys (the A operand) computed lane by lane; the output's sub-chunk scores Qr·Kr[s]ᵀ with a
  batched B operand (``gemm(b_per_row=True)``), its diagonal 16x16 blocks summed on CUDA cores in the
  lanes that hold them (``_Fragments.diagonal``), the scaled keys' operands read as 16-byte vectors into
  registers (a shared -> shared pass would need a barrier per step: the kernel's shared buffers are one
  pool to TVM's barrier planner).
* parallel forms (``apply_cuda_parallel``): one CTA per (sequence, head, value tile, query tile); Q Kᵀ
  and P V of each key tile on tensor cores.
* recurrent forms (``apply_cuda_recurrent``): CUDA cores; one thread per state column, the column of
  K fp32 values in registers, q_t / k_t / v_t staged in shared memory; the value tile is the variant.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm_attn._tvm import Schedule, fragment_map, mma_intrins
from tvm_attn.ops.linear.kinds import SEGMENT_TILING, SPLIT_TILINGS


def _has(sch: Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001  (TVM raises a generic error for a missing block)
        return False


# ------------------------------------------------------------------------------------------------
# CPU
# ------------------------------------------------------------------------------------------------

_GEMMS = ("A_gemm", "KS_gemm", "U_gemm", "O_gemm", "Sa_gemm", "W_gemm", "WS_gemm", "S_gemm", "OH_gemm", "OT_gemm",
          "OV_gemm")


def apply_cpu(sch: Schedule) -> None:
    """LLVM schedule of any linear-attention form: tiles in parallel, matmul rows vectorised."""
    sch.parallel(sch.fuse(*sch.get_loops("tile")))
    for name in _GEMMS:
        if not _has(sch, name):
            continue
        blk = sch.get_sblock(name)
        i, j, r = sch.get_loops(blk)[-3:]
        sch.decompose_reduction(blk, i)
        sch.reorder(i, r, j)  # C[i, :] += A[i, r] · B[r, :]: a contiguous axpy LLVM vectorises


# ------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearVariant:
    """Compute-level choice of a CUDA kernel (its own tuning task) and the default decisions."""

    block_v: int = 32  # state columns per CTA
    warps: int = 4  # default decision of the warp count (a sampled knob)
    unroll: int = 16  # default decision of the unroll depth (a sampled knob)
    block_k: int = 0  # state rows per CTA of the split state kernel (add rule; 0: all K)
    stages: int = 0  # split state kernel: chunks whose tiles are fetched (cp.async) ahead of the one computing

    @property
    def key(self) -> str:
        bk = f"bk{self.block_k}" if self.block_k else ""
        st = f"s{self.stages}" if self.stages else ""
        return f"bv{self.block_v}{bk}w{self.warps}u{self.unroll}{st}"


DEFAULT_CHUNK_VARIANT = LinearVariant(block_v=32, warps=4, unroll=16)
DEFAULT_RECURRENT_VARIANT = LinearVariant(block_v=32, warps=1, unroll=0)
# the split chunk form (``ops/linear/split.py``), per kernel; the state kernel's key tile applies to the
# add rule only (the delta rule's W S needs every key row). Picked from the variants timed on an H200
# (bf16, K = V = 128, T = 32768: bench/results/h200/linear-kernels-20261128.json).
DEFAULT_SPLIT_VARIANTS = {
    "prep": LinearVariant(block_v=0, warps=2, unroll=0),
    "state": LinearVariant(block_v=32, warps=2, unroll=0, block_k=64, stages=2),  # add rule
    # add rule with many (sequence, head) pairs: one 64 x 128 tile of the state per CTA, 4 warps (the
    # default's 8 CTAs of 32 x 64 per pair are for few pairs, where they are what fills the card)
    "state_many": LinearVariant(block_v=64, warps=4, unroll=0, block_k=128, stages=2),
    # add rule with fewer pairs, where the 64 x 128 tiles are too few to fill the card and 64 x 64 ones are
    # not: 4 tiles per pair, 4 warps ((2, 8192), H 16: 128 CTAs, 0.221 ms for simple_gla against the default's
    # 0.241; bench/results/h200/linear-gla-banks-state-mid-20261202.json)
    "state_mid": LinearVariant(block_v=64, warps=4, unroll=0, block_k=64, stages=2),
    # add rule split along the sequence (kinds.SEGMENT_TILING): the whole 128 x 128 state per CTA, 8 warps
    # (bench/results/h200/linear-segmented-state-20261128.json)
    "state_whole": LinearVariant(block_v=128, warps=8, unroll=0, block_k=128, stages=2),
    "state_delta": LinearVariant(block_v=16, warps=2, unroll=0, stages=2),
    # the delta rule with more (sequence, head) pairs (SPLIT_TILINGS "v32" / "v64"): wider value tiles,
    # fewer re-reads of K and W per chunk, while their CTAs still fill the card; their warps own value
    # tiles, so V' forms in registers (``delta_state_vt``). v64 with one chunk fetched ahead fits two CTAs
    # per SM (bf16, K = V = 128, H200: bench/results/h200/linear-delta-state-vt-20261202.json)
    "state_v32": LinearVariant(block_v=32, warps=2, unroll=0, stages=2),
    "state_v64": LinearVariant(block_v=64, warps=4, unroll=0, stages=1),
    "output": LinearVariant(block_v=128, warps=8, unroll=0),  # at most one warp per 16-row tile of the chunk
    # the state and output in one kernel (many (sequence, head) pairs; ops/linear/split_fused.py): 64-wide
    # value tiles with the whole key range, warps owning 16-row value tiles; one chunk fetched ahead (add
    # rule: 104.5 KiB, two CTAs per SM; the delta rules, with W: 138.5 KiB, one, yet faster than two
    # unpipelined; bench/results/h200/linear-fused-variants-20261203.json)
    "fused": LinearVariant(block_v=64, warps=4, unroll=0, stages=1),
    "fused_delta": LinearVariant(block_v=64, warps=4, unroll=0, stages=1),
    # gla (ops/linear/split_gla.py): its state tile is [key, value], warps own its 16-row key tiles
    # (bench/results/h200/linear-gla-kernels-20261128.json)
    "state_gla": LinearVariant(block_v=64, warps=2, unroll=0, block_k=32, stages=3),
    # gla with many (sequence, head) pairs: the whole 128 x 128 state per CTA, 8 warps, one chunk fetched
    # ahead (170 KiB of shared memory): no re-reads of K, V and the gates across the pair's tiles
    # (bench/results/h200/linear-gla-state-variants-20261202.json: (8, 2048) 0.640 ms for the op against
    # 0.702 with the default's 8 tiles per pair)
    "state_gla_many": LinearVariant(block_v=128, warps=8, unroll=0, block_k=128, stages=1),
    # the carry between the two passes of a segmented state recurrence: one thread per state element
    "carry": LinearVariant(block_v=0, warps=8, unroll=0),
    # the gates' chunk-local cumsum: one thread per (chunk, head[, key channel])
    "cumsum": LinearVariant(block_v=0, warps=4, unroll=0),
}


def default_split_variant(part: str, rule: str, gate: str = "scalar", tiles: str = "") -> LinearVariant:
    """The default variant of one split kernel (``part``) for an op's state rule (``add`` / ``delta``)
    and gate (``none`` / ``scalar`` / ``vector``); ``tiles`` names one of its ``SPLIT_TILINGS``, or
    ``SEGMENT_TILING`` for the add rule's state passes split along the sequence (whose segment-local
    pass, ``state_local``, is the state kernel's)."""
    if part == "state_local":
        part = "state"
    if tiles:
        named = SPLIT_TILINGS.get((part, rule, gate), ())
        if part == "state" and rule == "add" and gate != "vector":
            named = (*named, SEGMENT_TILING)
        if tiles not in named:
            raise ValueError(f"no tiling {tiles!r} for the {part} kernel of rule {rule!r}, gate {gate!r}")
        return DEFAULT_SPLIT_VARIANTS[f"{part}_gla_{tiles}" if gate == "vector" else f"{part}_{tiles}"]
    if part == "fused" and rule == "delta":
        return DEFAULT_SPLIT_VARIANTS["fused_delta"]
    if part == "state" and (rule == "delta" or gate == "vector"):
        return DEFAULT_SPLIT_VARIANTS["state_delta" if rule == "delta" else "state_gla"]
    return DEFAULT_SPLIT_VARIANTS[part]


def split_variant_space(part: str, rule: str, gate: str = "scalar", tiles: str = "") -> list[LinearVariant]:
    """The compute variants tuning tries for one split kernel (each its own MetaSchedule task, its warp
    count sampled): the default first, then the tiles and pipeline depths timed around it on the H200."""
    default = default_split_variant(part, rule, gate, tiles)
    if part == "state" and rule == "delta":
        # wider value tiles re-read K and W less (each value tile reads them whole every chunk). With V'
        # formed in registers (32 and 64 wide: their warps own value tiles) the 64-wide tile compiles for
        # sm_90a in 164-168 registers without spills and needs 69 / 113 / 156 KiB of shared memory at
        # stages 0 / 1 / 2: three, two or one CTA per SM (at (8, 2048, 16) its 256 CTAs fit one wave on
        # 132 SMs from two per SM)
        grid = [LinearVariant(bv, 4 if bv >= 64 else 2, 0, 0, st) for bv in (16, 32, 64) for st in (0, 1, 2)]
        # the 16-wide tile with one warp: it owns the value tile, so V' forms in registers (``delta_state_vt``)
        grid += [LinearVariant(16, 1, 0, 0, st) for st in (1, 2)]
    elif part == "state" and gate == "vector":
        grid = [LinearVariant(bv, 2, 0, bk, st) for bv in (32, 64) for bk in (32, 64) for st in (2, 3)]
        # fewer, larger tiles (for many (sequence, head) pairs): 64 x 64 on 4 warps, 64 x 128 and 128 x 128
        grid += [LinearVariant(64, 4, 0, 64, st) for st in (1, 2, 3)]
        grid += [LinearVariant(bv, 8, 0, 128, 1) for bv in (64, 128)] + [LinearVariant(128, 4, 0, 64, 1)]
    elif part == "state":
        grid = [LinearVariant(bv, 4 if bv >= 64 else 2, 0, bk, st)
                for bv in (32, 64) for bk in (32, 64, 128) for st in (1, 2)]
        grid += [LinearVariant(128, 8, 0, 128, st) for st in (1, 2)]  # the whole state (SEGMENT_TILING's)
    elif part == "output":
        grid = [LinearVariant(bv, 8, 0) for bv in (64, 128)]
    elif part == "fused":  # (two CTAs of the 64-wide tile fit an SM at stages 1, the delta rule's at 0)
        grid = [LinearVariant(bv, 4 if bv >= 64 else 2, 0, 0, st) for bv in (32, 64) for st in (0, 1, 2)]
    else:
        grid = []

    def tiles_of(v):  # what makes a task: the tiles, the pipeline, and the delta state's compute form
        return v.block_v, v.block_k, v.stages, rule == "delta" and delta_state_vt(v.block_v, v.warps)

    out = [default]
    for v in grid:  # a variant differing from another only in its default warp decision is the same task
        if all(tiles_of(v) != tiles_of(o) for o in out):
            out.append(v)
    return out


UNROLL_CHOICES = (0, 16, 64)

# element-wise blocks of the chunk form: name -> number of trailing loops spread over the CTA's threads
_CHUNK_ELEMWISE = {
    "S_init": 2, "S_cast": 2, "Q_load": 2, "K_load": 2, "K2_load": 2, "V_load": 2, "beta_load": 1,
    "Q_decay": 2, "P_mask": 2, "K_decay": 2, "R_store": 2, "U_store": 2, "O_store": 2, "ht_store": 2,
}
# matmuls of the chunk form: name -> (A operand buffer, B operand buffer, B stored [N, K])
_CHUNK_GEMMS = {
    "A_gemm": ("QK_s", "K_s", True),
    "KS_gemm": ("K_s", "Y_s", False),
    "U_gemm": ("Tl_s", "Rb_s", False),
    "O_gemm": ("X_s", "Y_s", False),
    "Sa_gemm": ("Kt_s", "Y_s", False),
}
# buffers read through ldmatrix, padded against bank conflicts: buffer -> the block that lays it out
_LDMATRIX_OPERANDS = {"QK_s": "Q_load", "K_s": "K_load", "Y_s": "S_cast", "X_s": "Q_decay", "Kt_s": "K_decay",
                      "Tl_s": "T_cast", "Rb_s": "R_store"}


def _imap(i, j):
    # (row, col) -> (row tile, col tile, lane, register) of the mma fragment
    return (i // 16, j // 16, *fragment_map(i % 16, j % 16))


def _read_index(sch: Schedule, blk, name: str) -> int:
    for n, region in enumerate(sch.get(blk).reads):
        if region.source.name == name:
            return n
    raise KeyError(name)


def _spread(sch: Schedule, loops, nw):
    """Bind ``loops`` (fused) over the CTA: warps x lanes, the remainder serial per thread; returns the
    lane loop."""
    f = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    _, ty, tx = sch.split(f, [None, nw, 32])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    return tx


def _spread_reduction(sch: Schedule, name: str, n_spatial: int, nw) -> None:
    """Spread the ``n_spatial`` loops before a CUDA-core reduction's (innermost) reduction loop over the
    CTA and accumulate in a register: a sum into shared memory would need barriers inside the (possibly
    predicated) per-thread loop."""
    blk = sch.get_sblock(name)
    tx = _spread(sch, sch.get_loops(blk)[-n_spatial - 1:-1], nw)
    sch.reverse_compute_at(sch.cache_write(blk, 0, "local"), tx)


def _tc_tiles(sch: Schedule, name: str):
    """Split a matmul block's (i, j, k) into 16x16x16 tensor-core tiles; returns the outer block and
    its tile loops (i, j, k)."""
    blk = sch.get_sblock(name)
    i, j, k = sch.get_loops(blk)[-3:]
    i, i_tc = sch.split(i, [None, 16])
    j, j_tc = sch.split(j, [None, 16])
    k, k_tc = sch.split(k, [None, 16])
    sch.reorder(i, j, k, i_tc, j_tc, k_tc)
    return sch.blockize(i_tc), i, j, k


def _fragment_loops(sch: Schedule, cache):
    """Lay a warp-scope operand cache out as mma fragments (16x16 tiles); returns the loop to tensorize
    with an ldmatrix intrinsic."""
    r, c = sch.get_loops(cache)[-2:]
    r0, r1 = sch.split(r, [None, 16])
    c0, c1 = sch.split(c, [None, 16])
    sch.reorder(r0, c0, r1, c1)
    sch.transform_layout(cache, ("write", 0), _imap)
    return r1


def _bind_fragment_init(sch: Schedule, name: str) -> None:
    # zero fill of an accumulator, one lane per threadIdx.x (mma_fill's offsets miss the lane term)
    init = sch.get_sblock(name)
    sch.transform_block_layout(init, lambda a, b: fragment_map(a, b))
    sch.bind(sch.get_loops(init)[-2], "threadIdx.x")


def _tc_gemm(sch: Schedule, name: str, tiles, a_name: str, b_name: str, b_nk: bool, nw, intrin: dict) -> None:
    """C (fp32, shared) = A · B on mma.sync: warps own row tiles, fragments in registers, ldmatrix loads."""
    outer, i, j, k = tiles
    iw, ii = sch.split(i, [nw, None])
    sch.reorder(iw, ii, j, k)
    sch.bind(iw, "threadIdx.y")
    sch.reorder(k, ii, j)  # k outermost: each warp reuses its A fragments across the row of tiles
    a_w = sch.cache_read(outer, _read_index(sch, outer, a_name), "warp")
    b_w = sch.cache_read(outer, _read_index(sch, outer, b_name), "warp")
    sch.compute_at(a_w, k)
    sch.compute_at(b_w, k)
    c_w = sch.cache_write(outer, 0, "warp")
    sch.reverse_compute_at(c_w, iw)
    ci, cj = sch.get_loops(c_w)[-2:]
    ci0, ci1 = sch.split(ci, [None, 16])
    cj0, cj1 = sch.split(cj, [None, 16])
    sch.reorder(ci0, cj0, ci1, cj1)
    sch.decompose_reduction(outer, k)
    frag_loads = [_fragment_loops(sch, cache) for cache in (a_w, b_w)]
    sch.transform_layout(c_w, ("read", 0), _imap)
    sch.tensorize(frag_loads[0], intrin["load_a"])
    sch.tensorize(frag_loads[1], intrin["load_b_nk" if b_nk else "load_b_kn"])
    sch.tensorize(sch.get_loops(sch.get_sblock(name))[-3], intrin["mma_b_nk" if b_nk else "mma"])
    _bind_fragment_init(sch, f"{name}_init")
    sch.tensorize(sch.get_loops(c_w)[-2], intrin["store_f32"])


def apply_cuda_chunk(sch: Schedule, variant: LinearVariant, dtype: str, *, chunk: int, key_dim: int,
                     tunable: bool = False) -> None:
    """Schedule a chunk-form PrimFunc (built with ``variant.block_v``, tile scope "shared.dyn") for
    tensor cores. ``tunable`` samples the knobs instead of taking the defaults."""
    intrin = dict(mma_intrins(dtype), store_f32="mma_store_16x16_f32_shared_dyn_simple_")
    n, h, jv = sch.get_loops("tile")
    sch.bind(jv, "blockIdx.x")
    sch.bind(h, "blockIdx.y")
    sch.bind(n, "blockIdx.z")
    gemms = {name: _tc_tiles(sch, name) for name in _CHUNK_GEMMS if _has(sch, name)}
    # warps: a perfect tiling of the smallest matmul's row tiles, so every matmul splits evenly
    smallest = "O_gemm" if chunk <= key_dim else "Sa_gemm"
    tiles = min(chunk, key_dim) // 16
    warps = min(variant.warps, tiles)
    nw, _ = sch.sample_perfect_tile(gemms[smallest][1], n=2, max_innermost_factor=tiles,
                                    decision=None if tunable else [warps, tiles // warps])
    for name, tiles_of in gemms.items():
        _tc_gemm(sch, name, tiles_of, *_CHUNK_GEMMS[name], nw, intrin)
    for name, n_spatial in _CHUNK_ELEMWISE.items():
        if _has(sch, name):
            _spread(sch, sch.get_loops(name)[-n_spatial:], nw)
    for buf, name in _LDMATRIX_OPERANDS.items():
        if _has(sch, name) and sch.get(sch.get_sblock(name)).writes[0].source.name == buf:
            sch.storage_align(sch.get_sblock(name), 0, axis=-2, factor=32, offset=8)
    if _has(sch, "g_cumsum"):  # rows (and channels) spread, the prefix sum serial per thread
        _spread_reduction(sch, "g_cumsum", len(sch.get_loops("g_cumsum")) - 1, nw)
    if _has(sch, "A_gated"):  # (i, j) spread, the gated dot product serial per thread
        _spread_reduction(sch, "A_gated", 2, nw)
    if _has(sch, "T_solve"):
        # one column m per thread, rows in order: a column reads only itself, so it stays in the
        # thread's registers ("local" scope) up to its cast, which runs on the same thread
        _spread(sch, sch.get_loops("T_solve")[-3:-2], nw)
        i, j = sch.get_loops("T_cast")[-2:]
        sch.reorder(j, i)
        _spread(sch, [j], nw)
    for name in ("S_update", "L_mask"):  # in-place updates written as extent-1 reductions
        if _has(sch, name):
            _spread(sch, sch.get_loops(name)[-3:-1], nw)
    unroll = sch.sample_categorical(list(UNROLL_CHOICES), [1 / len(UNROLL_CHOICES)] * len(UNROLL_CHOICES),
                                    decision=None if tunable else UNROLL_CHOICES.index(variant.unroll))
    sch.annotate(sch.get_loops("chunk")[0], "pragma_auto_unroll_max_step", unroll)


def _copy(sch: Schedule, name: str, nw, threads_max: int, one_d: bool = False, align: bool = True,
          pad: int = 8) -> None:
    """A plain copy (global -> shared, or with ``align=False`` shared -> global) spread over the CTA,
    16-byte vectors where every thread count the warp knob can take divides the tile (``threads_max``:
    the largest), unrolled; shared destinations (ldmatrix operands) padded against bank conflicts: rows
    ``pad`` elements past a multiple of 32."""
    blk = sch.get_sblock(name)
    loops = sch.get_loops(blk)[-1 if one_d else -2:]
    extents = [int(sch.get(lp).extent) for lp in loops]
    f = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = extents[0] * (extents[1] if len(extents) > 1 else 1)
    lanes = 16 // (sch.get(blk).writes[0].source.dtype.bits // 8)  # elements of a 16-byte vector
    vec = next((v for v in (8, 4, 2) if v <= lanes and not one_d and extents[-1] % v == 0
                and total % (threads_max * v) == 0), 1)
    if vec > 1:
        outer, ty, tx, vv = sch.split(f, [None, nw, 32, vec])
        sch.vectorize(vv)
    else:
        outer, ty, tx = sch.split(f, [None, nw, 32])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.unroll(outer)
    if align and not one_d:
        sch.storage_align(blk, 0, axis=-2, factor=32, offset=pad)


class _Fragments:
    """mma.sync products whose results stay in registers ("warp" scope, mma fragment layout), and the
    element-wise passes over them, each lane on its own registers (the flash schedule's structure).

    Warps own 16-row tiles of a product's result, or with ``by="cols"`` its 16-column tiles; a pass
    over a fragment buffer splits it the way the product that wrote it did. A register A operand read
    by a column-split product is computed whole by every warp (``replicate``)."""

    def __init__(self, sch: Schedule, dtype: str, variant: LinearVariant, tunable: bool):
        self.sch, self.intrin = sch, mma_intrins(dtype)
        self.variant, self.tunable = variant, tunable
        self.nw = None  # the warp count, sampled by the first product (give it the fewest warp tiles)
        self.tiles = 0
        self.laid_out: set[str] = set()  # fragment buffers already in the fragment layout
        self.split: dict[str, str] = {}  # fragment buffer -> "rows" | "cols" (how warps share it)

    def _layout(self, blk, kind: str, index: int, buf: str) -> None:
        if buf not in self.laid_out:
            self.sch.transform_layout(blk, (kind, index), _imap)
            self.laid_out.add(buf)

    def gemm(self, name: str, *, a: str, b: str, b_nk: bool = False, a_frag: bool = False,
             by: str = "rows", b_per_row: bool = False) -> None:
        """C[i, j] (+)= Σ_k A · B, warps owning 16-row (or ``by="cols"``: 16-column) tiles of C. Operands
        come from shared memory through ldmatrix (A stored [M, K]; B stored [K, N], or [N, K] with
        ``b_nk``); with ``a_frag`` A is a fragment buffer already in registers (an mma takes only its A
        operand from registers). ``b_per_row``: B's tile depends on C's row tile too (a batched B), so
        its fragments are loaded per (k, row tile, column tile)."""
        sch = self.sch
        outer, i, j, k = _tc_tiles(sch, name)
        split = i if by == "rows" else j
        if self.nw is None:  # the warp-count knob: a perfect tiling of this product's warp tiles
            self.tiles = int(sch.get(split).extent)
            warps = min(self.variant.warps, self.tiles)
            self.nw, _ = sch.sample_perfect_tile(split, n=2, max_innermost_factor=self.tiles,
                                                 decision=None if self.tunable else [warps, self.tiles // warps])
        w, inner = sch.split(split, [self.nw, None])
        if by == "rows":
            sch.reorder(w, inner, j, k)
            rows, cols = inner, j
        else:
            sch.reorder(w, i, inner, k)
            rows, cols = i, inner
        sch.bind(w, "threadIdx.y")
        if b_per_row:
            sch.reorder(k, rows, cols)
        else:
            sch.reorder(k, cols, rows)  # k outermost: one B fragment live at a time
        loads = []
        for buf, frag, at, intrin in ((a, a_frag, k, "load_a"), (b, False, cols, "load_b_nk" if b_nk else "load_b_kn")):
            if frag:
                self._layout(outer, "read", _read_index(sch, outer, buf), buf)
                continue
            cache = sch.cache_read(outer, _read_index(sch, outer, buf), "warp")
            sch.compute_at(cache, at)
            loads.append((_fragment_loops(sch, cache), intrin))
        out = sch.get(outer).writes[0].source.name
        self._layout(outer, "write", 0, out)
        self.split[out] = by
        for loop, intrin in loads:
            sch.tensorize(loop, self.intrin[intrin])
        sch.decompose_reduction(outer, k)
        sch.tensorize(sch.get_loops(name)[-3], self.intrin["mma_b_nk" if b_nk else "mma"])
        _bind_fragment_init(sch, f"{name}_init")

    def load(self, name: str, *, buf: str, transposed: bool = False, replicate: bool = False) -> None:
        """A copy ``buf[m, k] = shared[m, k]`` (block loops m, k) into the A fragments of a row-split
        product, one ldmatrix per 16x16 tile, or with ``transposed`` ``buf[m, k] = shared[k, m]`` (block
        loops k, m) by ldmatrix.trans; warps load the 16-row tiles they own, or with ``replicate`` (the A
        operand of a column-split product) every warp all of them."""
        sch = self.sch
        blk = sch.get_sblock(name)
        self._layout(blk, "write", 0, buf)
        outer, inner = sch.get_loops(blk)[-2:]
        m, k = (inner, outer) if transposed else (outer, inner)
        m0, m1 = sch.split(m, [None, 16])
        k0, k1 = sch.split(k, [None, 16])
        if replicate:
            sch.reorder(m0, k0, *((k1, m1) if transposed else (m1, k1)))
        else:
            mw, m0 = sch.split(m0, [self.nw, None])
            sch.reorder(mw, m0, k0, *((k1, m1) if transposed else (m1, k1)))
            sch.bind(mw, "threadIdx.y")
        sch.unroll(m0)
        sch.unroll(k0)
        sch.tensorize(k1 if transposed else m1, self.intrin["load_a_t" if transposed else "load_a"])

    def elementwise(self, name: str, *, buf: str, kind: str = "write", in_place: bool = False,
                    replicate: bool = False) -> None:
        """Map a pass over a fragment buffer ``buf`` onto the lanes that hold it: split over the warps as
        ``buf``'s product split it (rows by default), or with ``replicate`` done whole by every warp."""
        sch = self.sch
        blk = sch.get_sblock(name)
        if buf not in self.laid_out:
            self._layout(blk, kind, _read_index(sch, blk, buf) if kind == "read" else 0, buf)
        if in_place:  # an extent-1 reduction
            sch.transform_block_layout(blk, lambda i, j, r: (*_imap(i, j), r))
            a, c, lane, loc, _ = sch.get_loops(blk)[-5:]
        else:
            sch.transform_block_layout(blk, _imap)
            a, c, lane, loc = sch.get_loops(blk)[-4:]
        if replicate:
            sch.reorder(lane, a, c, loc)
            serial = (a, c, loc)
        elif self.split.get(buf, "rows") == "rows":
            aw, ai = sch.split(a, [self.nw, None])
            sch.reorder(aw, lane, ai, c, loc)
            sch.bind(aw, "threadIdx.y")
            serial = (ai, c, loc)
        else:
            cw, ci = sch.split(c, [self.nw, None])
            sch.reorder(cw, lane, a, ci, loc)
            sch.bind(cw, "threadIdx.y")
            serial = (a, ci, loc)
        sch.bind(lane, "threadIdx.x")
        for lp in serial:  # register arrays need compile-time indices
            sch.unroll(lp)

    def diagonal(self, name: str, *, buf: str) -> None:
        """Map a reduction over the diagonal 16x16 tiles of a row-split fragment buffer ``buf`` (block
        iterators: tile, row, column, reduction) onto the lanes that hold them: each warp its own row
        tiles, each lane its 8 elements of a tile, the reduction outside them (the operands of a row
        and of a column are read once per step for every element that shares them)."""
        sch = self.sch
        blk = sch.get_sblock(name)
        self._layout(blk, "write", 0, buf)
        sch.transform_block_layout(blk, lambda s, i, j, r: (s, *fragment_map(i, j), r))
        s, lane, loc, r = sch.get_loops(blk)[-4:]
        sw, si = sch.split(s, [self.nw, None])
        r, ri = sch.split(r, [None, 4])
        sch.reorder(sw, lane, si, r, ri, loc)
        sch.unroll(ri)
        sch.bind(sw, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        sch.unroll(si)
        # the sums in a per-thread array (a diagonal tile's registers are indexed by the warp, which
        # a register array cannot be), written into the fragment once
        wb = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(wb, si)
        sch.unroll(sch.get_loops(wb)[-1])
        sch.unroll(loc)
        init = sch.decompose_reduction(blk, r)
        sch.unroll(sch.get_loops(init)[-1])


def _pipeline_statements(stmt) -> int:
    """How many statements the software-pipeline pass sees in a loop body: it flattens scope blocks
    that bind no iterators and thread-bound loops (a matmul's init and update then count as two)."""
    if hasattr(stmt, "seq"):
        return sum(_pipeline_statements(s) for s in stmt.seq)
    if getattr(stmt, "thread_binding", None) is not None:
        return _pipeline_statements(stmt.body)
    block = getattr(stmt, "block", None)
    if block is not None and not block.iter_vars:
        return _pipeline_statements(block.body)
    return 1


def _pipeline(sch: Schedule, loop, n_loads: int, stages: int) -> None:
    """Software pipeline over ``loop``: its first ``n_loads`` statements (plain copies into shared
    memory) run ``stages`` iterations ahead as cp.async (the loop must run at least ``stages`` times)."""
    n = _pipeline_statements(sch.get(loop).body)
    sch.annotate(loop, "software_pipeline_stage", [0] * n_loads + [stages] * (n - n_loads))
    sch.annotate(loop, "software_pipeline_order", list(range(n)))
    sch.annotate(loop, "software_pipeline_async_stages", [0])


def apply_cuda_chunk_prep(sch: Schedule, variant: LinearVariant, dtype: str, *, tunable: bool = False) -> None:
    """Schedule the split form's prep kernel (delta rules): one CTA per (chunk, head); K Kᵀ, the mask,
    Tm diag(β eᵇ) K and Tm diag(β) V on tensor cores with the products in registers (K in shared memory
    once: K Kᵀ's A operand comes from it into registers); the triangular solve one column per thread,
    fully unrolled so the column stays in registers."""
    ci, h = sch.get_loops("tile")
    sch.bind(ci, "blockIdx.x")
    sch.bind(h, "blockIdx.y")
    fr = _Fragments(sch, dtype, variant, tunable)
    fr.gemm("A_gemm", a="Ka_w", b="K_s", b_nk=True, a_frag=True)
    fr.load("Ka_frag", buf="Ka_w")
    fr.gemm("W_gemm", a="Tk_s", b="K_s")
    fr.gemm("U_gemm", a="Tv_s", b="V_s")
    for name in ("K_load", "V_load", "b_load", "beta_load"):
        if _has(sch, name):
            _copy(sch, name, fr.nw, 32 * fr.tiles, one_d=name in ("b_load", "beta_load"))
    fr.elementwise("L_mask", buf="A_w", in_place=True)
    fr.elementwise("L_store", buf="A_w", kind="read")
    fr.elementwise("W_cast", buf="W_w", kind="read")
    fr.elementwise("U_cast", buf="U_w", kind="read")
    for name in ("W_store", "U_store"):
        _copy(sch, name, fr.nw, 32 * fr.tiles, align=False)
    m, i, l = sch.get_loops("T_solve")[-3:]
    _spread(sch, [m], fr.nw)
    sch.unroll(i)
    sch.unroll(l)
    _spread(sch, sch.get_loops("T_scale")[-1:], fr.nw)
    m, i = sch.get_loops("T_cast")[-2:]
    _spread(sch, [m], fr.nw)
    sch.unroll(i)
    for buf in (0, 1):
        sch.storage_align(sch.get_sblock("T_cast"), buf, axis=-2, factor=32, offset=8)


def delta_state_vt(block_v: int, warps: int) -> bool:
    """Whether a delta-rule state tile forms V' transposed, in registers (``split.state``'s ``vt``): when
    its default warp count divides the number of its 16-row value tiles, so warps own value tiles of
    every product (tuning samples the warp count among those divisors)."""
    return (block_v // 16) % warps == 0


def apply_cuda_chunk_state(sch: Schedule, variant: LinearVariant, dtype: str, *, tunable: bool = False) -> None:
    """Schedule the split form's state kernel: one CTA per (sequence, head, value tile[, key tile]) walks
    the chunks with the fp32 state (transposed) in registers; the tiles of the next ``variant.stages``
    chunks are fetched by cp.async while one computes. Per chunk: the state rounded once into shared
    memory (h[c], stored with 16-byte vectors), then Sᵀ += Vdᵀ K on tensor cores, Vdᵀ (the A operand) in
    registers. Add rule: warps own 16-row (value) tiles of Sᵀ and each loads its rows of Vᵀ
    (ldmatrix.trans) and decays them. Delta rule: where warps can own value tiles, V' is formed in
    registers (``_apply_delta_state_vt``); else (the default's single 16-wide value tile) W·odt(S) reads
    the rounded state from shared memory, warps own its 16-row (chunk) tiles and decay their rows of V'
    in the registers, V' and Vd go to shared memory rounded, and the update's warps own 16-column (key)
    tiles, each loading all of Vdᵀ (ldmatrix.trans).
    (Nsight Compute, H200, 2 warps per CTA: the kernel is bound by each warp's instruction issue, so
    work that every warp repeated cost time directly.)"""
    n, h, jv, jk = sch.get_loops("tile")
    sch.bind(sch.fuse(jv, jk), "blockIdx.x")
    sch.bind(h, "blockIdx.y")
    sch.bind(n, "blockIdx.z")
    c_loop = sch.get_loops("K_load")[-3]
    if _has(sch, "Y_store"):  # the delta rule with V'ᵀ = Uᵀ − Y Wᵀ in registers (``split.state``'s vt)
        _apply_delta_state_vt(sch, variant, dtype, tunable, c_loop)
        return
    delta = _has(sch, "WS_gemm")
    fr = _Fragments(sch, dtype, variant, tunable)
    # the product with the fewest warp tiles first: it samples the warp count, which divides both
    ws_first = delta and (int(sch.get(sch.get_loops("WS_gemm")[-3]).extent)
                          <= int(sch.get(sch.get_loops("S_gemm")[-2]).extent))
    if ws_first:
        fr.gemm("WS_gemm", a="W_s", b="Y_s", b_nk=True)
    fr.gemm("S_gemm", a="Vt_w" if delta else "Vd_w", b="K_s", a_frag=True, by="cols" if delta else "rows")
    if delta and not ws_first:
        fr.gemm("WS_gemm", a="W_s", b="Y_s", b_nk=True)
    loads = [b for b in ("K_load", "W_load", "V_load", "b_load") if _has(sch, b)]
    threads_max = 32 * fr.tiles
    for name in loads:
        _copy(sch, name, fr.nw, threads_max, one_d=name == "b_load")
    if delta:  # Vdᵀ by ldmatrix.trans, all of it in every warp (the update's warps own key tiles)
        fr.load("Vt_load", buf="Vt_w", transposed=True, replicate=True)
    else:  # Vᵀ by ldmatrix.trans, each warp its own rows, then decayed in the registers
        fr.load("Vt_load", buf="Vt_w", transposed=True)
        fr.elementwise("V_decay", buf="Vd_w")
    for name in ("S_init", "S_cast", "ht_store"):
        if _has(sch, name):  # (the segment-local pass keeps no h, so it has no S_cast nor h_store)
            fr.elementwise(name, buf="ST_w", kind="read" if name != "S_init" else "write")
    if _has(sch, "h_store"):
        sch.storage_align(sch.get_sblock("S_cast"), 0, axis=-2, factor=32, offset=8)
        _copy(sch, "h_store", fr.nw, threads_max, align=False)
    if _has(sch, "S_decay"):
        fr.elementwise("S_decay", buf="ST_w", in_place=True)
    if delta:
        fr.elementwise("Vn_form", buf="WS_w", in_place=True)
        fr.elementwise("Vn_calc", buf="WS_w", kind="read")
        fr.elementwise("Vn_decay", buf="WS_w", in_place=True)  # V' decayed once, by the warps that hold it
        fr.elementwise("Vds_calc", buf="WS_w", kind="read")
        _copy(sch, "vn_store", fr.nw, threads_max, align=False)
    if variant.stages:
        _pipeline(sch, c_loop, len(loads), variant.stages)


def _apply_delta_state_vt(sch: Schedule, variant: LinearVariant, dtype: str, tunable: bool, c_loop) -> None:
    """The delta rule's state kernel with V' formed transposed (``split.state``'s vt): warps own 16-row
    value tiles of both products, so a chunk's steps chain in each warp's registers: Y = odt(Sᵀ) (A
    operand) -> V'ᵀ = Uᵀ − Y Wᵀ -> Vdᵀ = odt(V'ᵀ ⊙ d) (A operand) -> Sᵀ = e^{b_C} Sᵀ + Vdᵀ K. Y and V' are
    written to shared memory from the registers and copied out (h, vn) after the update."""
    fr = _Fragments(sch, dtype, variant, tunable)
    fr.gemm("WS_gemm", a="Y_w", b="W_s", b_nk=True, a_frag=True)  # samples the warps: divisors of the value tiles
    fr.gemm("S_gemm", a="Vd_w", b="K_s", a_frag=True)
    loads = [b for b in ("K_load", "W_load", "V_load", "b_load") if _has(sch, b)]
    threads_max = 32 * fr.tiles
    for name in loads:
        _copy(sch, name, fr.nw, threads_max, one_d=name == "b_load")
    for name in ("S_init", "S_cast", "ht_store"):
        fr.elementwise(name, buf="ST_w", kind="read" if name != "S_init" else "write")
    fr.elementwise("Y_store", buf="Y_w", kind="read")
    if _has(sch, "S_decay"):
        fr.elementwise("S_decay", buf="ST_w", in_place=True)
    fr.elementwise("Vn_form", buf="WS_w", in_place=True)
    fr.elementwise("Vn_calc", buf="WS_w", kind="read")
    fr.elementwise("V_decay", buf="Vd_w")
    for name, out in (("Y_store", "h_store"), ("Vn_calc", "vn_store")):
        sch.storage_align(sch.get_sblock(name), 0, axis=-2, factor=32, offset=8)
        _copy(sch, out, fr.nw, threads_max, align=False)
    if variant.stages:
        _pipeline(sch, c_loop, len(loads), variant.stages)


def apply_cuda_chunk_fused(sch: Schedule, variant: LinearVariant, dtype: str, *, tunable: bool = False) -> None:
    """Schedule the fused state and output kernel (``ops/linear/split_fused.py``): one CTA per (sequence,
    head, value tile) walks the chunks with the fp32 state (transposed) in registers, the next
    ``variant.stages`` chunks' tiles (Q, K, V or W and U, b) fetched by cp.async while one computes. Warps
    own 16-row value tiles of the state and of Oᵀ: Y = odt(Sᵀ) and the values (Vᵀ by ldmatrix.trans, its
    rows; or V'ᵀ = Uᵀ − Y Wᵀ formed there) are their A operands in the registers, and the values decayed
    there are the update's; Q Kᵀ's warps own 16-row chunk tiles and write P, rounded and masked, to shared
    memory for Vᵀ Pᵀ; Oᵀ leaves through shared memory in whole rows."""
    n, h, jv = sch.get_loops("tile")
    sch.bind(jv, "blockIdx.x")
    sch.bind(h, "blockIdx.y")
    sch.bind(n, "blockIdx.z")
    c_loop = sch.get_loops("Q_load")[-3]
    fr = _Fragments(sch, dtype, variant, tunable)
    # the product with the fewest warp tiles first: it samples the warp count, which divides the others'
    value_first = int(sch.get(sch.get_loops("OT_gemm")[-3]).extent) <= int(sch.get(sch.get_loops("A_gemm")[-3]).extent)
    if value_first:
        fr.gemm("OT_gemm", a="Y_w", b="Q_s", b_nk=True, a_frag=True)
    fr.gemm("A_gemm", a="Q_s", b="K_s", b_nk=True)
    if not value_first:
        fr.gemm("OT_gemm", a="Y_w", b="Q_s", b_nk=True, a_frag=True)
    fr.gemm("S_gemm", a="Vd_w", b="K_s", a_frag=True)
    fr.gemm("OV_gemm", a="Vt_w", b="P_s", b_nk=True, a_frag=True)
    delta = _has(sch, "WS_gemm")
    if delta:  # V'ᵀ = Uᵀ − Y Wᵀ in the registers, rounded there for Vᵀ Pᵀ, decayed there for the update
        fr.gemm("WS_gemm", a="Y_w", b="W_s", b_nk=True, a_frag=True)
    loads = [b for b in ("Q_load", "K_load", "W_load", "V_load", "b_load") if _has(sch, b)]
    threads_max = 32 * fr.tiles
    for name in loads:
        _copy(sch, name, fr.nw, threads_max, one_d=name == "b_load")
    if delta:
        fr.elementwise("Vn_form", buf="WS_w", in_place=True)
        fr.elementwise("Vn_round", buf="WS_w", kind="read")
    else:
        fr.load("Vt_load", buf="Vt_w", transposed=True)
    fr.elementwise("V_decay", buf="Vd_w")
    for name in ("S_init", "S_cast", "ht_store"):
        fr.elementwise(name, buf="ST_w", kind="read" if name != "S_init" else "write")
    fr.elementwise("A_mask", buf="A_w", in_place=True)
    fr.elementwise("P_calc", buf="A_w", kind="read")
    if _has(sch, "S_decay"):
        fr.elementwise("S_decay", buf="ST_w", in_place=True)
        fr.elementwise("OT_decay", buf="OT_w", in_place=True)
    fr.elementwise("O_cast", buf="OT_w", kind="read")
    for name in ("P_calc", "O_cast"):
        sch.storage_align(sch.get_sblock(name), 0, axis=-2, factor=32, offset=8)
    _copy(sch, "O_store", fr.nw, threads_max, align=False)
    if variant.stages:
        _pipeline(sch, c_loop, len(loads), variant.stages)


def apply_cuda_chunk_state_gla(sch: Schedule, variant: LinearVariant, dtype: str, *, tunable: bool = False) -> None:
    """Schedule gla's split state kernel (``ops/linear/split_gla.py``): one CTA per (sequence, head, value
    tile, key tile) walks the chunks with the fp32 state tile S [BK, BV] in registers, warps owning its
    16-row (key) tiles; the next ``variant.stages`` chunks' tiles (K, V, b) fetched by cp.async while one
    computes. Per chunk: S rounded once into shared memory and stored as h[c] in 16-byte rows, the
    decayed keys Kdᵀ (the A operand) computed by each warp for its own rows, S decayed in place, and
    S += Kdᵀ V on tensor cores."""
    n, h, jv, jk = sch.get_loops("tile")
    sch.bind(sch.fuse(jv, jk), "blockIdx.x")
    sch.bind(h, "blockIdx.y")
    sch.bind(n, "blockIdx.z")
    c_loop = sch.get_loops("K_load")[-3]
    fr = _Fragments(sch, dtype, variant, tunable)
    fr.gemm("S_gemm", a="Kd_w", b="V_s", a_frag=True)
    loads = ("K_load", "V_load", "G_load")
    threads_max = 32 * fr.tiles
    for name in loads:
        _copy(sch, name, fr.nw, threads_max)
    fr.elementwise("Kd_calc", buf="Kd_w")
    for name in ("S_init", "S_cast", "ht_store"):
        fr.elementwise(name, buf="S_w", kind="read" if name != "S_init" else "write")
    sch.storage_align(sch.get_sblock("S_cast"), 0, axis=-2, factor=32, offset=8)
    _copy(sch, "h_store", fr.nw, threads_max, align=False)
    fr.elementwise("S_decay", buf="S_w", in_place=True)
    if variant.stages:
        _pipeline(sch, c_loop, len(loads), variant.stages)


def apply_cuda_chunk_output_gla(sch: Schedule, variant: LinearVariant, dtype: str, *, tunable: bool = False) -> None:
    """Schedule gla's split output kernel: one CTA per (chunk, head, value tile), warps owning 16-row
    (sub-chunk) tiles of every product. (Q ⊙ eᵇ)·h and the sub-chunk scores Qr·Kr[s]ᵀ on tensor cores
    with their register operands computed lane by lane; the diagonal blocks' exact scores on CUDA cores
    in the lanes that hold them; P·V with P in registers."""
    ci, h, jv = sch.get_loops("tile")
    sch.bind(ci, "blockIdx.x")
    sch.bind(h, "blockIdx.y")
    sch.bind(jv, "blockIdx.z")
    fr = _Fragments(sch, dtype, variant, tunable)
    fr.gemm("OH_gemm", a="Qg_w", b="H_s", a_frag=True)
    fr.gemm("A_gemm", a="Qr_w", b="Kr_s", b_nk=True, a_frag=True, b_per_row=True)
    threads_max = 32 * fr.tiles
    for name in ("Q_load", "K_load", "H_load", "V_load"):
        _copy(sch, name, fr.nw, threads_max)
    # the fp32 gates are read by the diagonal blocks one row per lane group, not through ldmatrix: rows
    # 4 words past a multiple of 32 (8 put rows i and i + 4 on the same banks: the output kernel 358 ->
    # 332 us at (8, 2048); bench/results/h200/linear-gla-banks-state-mid-20261202.json)
    _copy(sch, "G_load", fr.nw, threads_max, pad=4)
    # the scaled keys, 8 per thread and step: their rows of k and b read from global memory as 16-byte
    # vectors into registers (every step's loads can be in flight together: no barrier between steps),
    # computed there and stored as one 16-byte vector
    wb = sch.get_sblock("Kr_store")
    f = sch.fuse(*sch.get_loops(wb)[-2:])
    steps, ty, tx, vv = sch.split(f, [None, fr.nw, 32, 8])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    for name in ("Kr_calc", "Kr_k", "Kr_b", "Kr_ref"):
        sch.compute_at(sch.get_sblock(name), tx)
        if name != "Kr_calc":
            sch.vectorize(sch.get_loops(name)[-1])
    sch.unroll(sch.get_loops("Kr_calc")[-1])
    sch.vectorize(vv)
    sch.unroll(steps)
    sch.storage_align(wb, 0, axis=-2, factor=32, offset=8)
    fr.elementwise("Qg_calc", buf="Qg_w")
    fr.elementwise("Qr_calc", buf="Qr_w")
    fr.diagonal("A_diag", buf="D_w")
    _output_tail(sch, fr)


def apply_cuda_chunk_output(sch: Schedule, variant: LinearVariant, dtype: str, *, tunable: bool = False) -> None:
    """Schedule the split form's output kernel: one CTA per (chunk, head, value tile); Q h, Q Kᵀ and
    P V on tensor cores with every product in registers (warps own 16-row tiles of the chunk), P fed to
    the last product as its A operand without leaving them."""
    ci, h, jv = sch.get_loops("tile")
    sch.bind(ci, "blockIdx.x")
    sch.bind(h, "blockIdx.y")
    sch.bind(jv, "blockIdx.z")
    fr = _Fragments(sch, dtype, variant, tunable)
    fr.gemm("OH_gemm", a="Q_s", b="H_s", b_nk=True)
    fr.gemm("A_gemm", a="Q_s", b="K_s", b_nk=True)
    for name in ("Q_load", "K_load", "H_load", "V_load", "b_load"):
        if _has(sch, name):
            _copy(sch, name, fr.nw, 32 * fr.tiles, one_d=name == "b_load")
    if _has(sch, "O_decay"):
        fr.elementwise("O_decay", buf="O_w", in_place=True)
    _output_tail(sch, fr)


def _output_tail(sch: Schedule, fr: _Fragments) -> None:
    """The output kernels' last steps (``split._output_tail``): the masked scores P in registers fed to
    P·V as its A operand, O rounded into shared memory and stored as 16-byte rows."""
    fr.elementwise("P_mask", buf="P_w")
    fr.gemm("O_gemm", a="P_w", b="V_s", a_frag=True)
    fr.elementwise("O_cast", buf="O_w", kind="read")
    _copy(sch, "O_store", fr.nw, 32 * fr.tiles, align=False)


def apply_cuda_per_thread(sch: Schedule, variant: LinearVariant, dtype: str, *, tunable: bool = False) -> None:
    """Schedule a kernel whose ``tile`` block is one thread's work (the segments' carry, ``split.carry``:
    one thread per state element; the gates' chunk cumsum, ``split.gate_cumsum``: one per chunk and
    head[, key channel]): consecutive threads on the innermost axis (coalesced), ``variant.warps`` warps
    per CTA."""
    f = sch.fuse(*sch.get_loops("tile"))
    bx, tx = sch.split(f, [None, 32 * variant.warps])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def apply_cuda_chunk_part(sch: Schedule, part: str, variant: LinearVariant, dtype: str, *,
                          tunable: bool = False) -> None:
    """Schedule one kernel of the split chunk form (``part``: prep | state | output, or a segmented state
    pass's state_local | carry, or the gates' cumsum; the tiles are in the compute, built with ``variant``'s)."""
    gla = _has(sch, "G_load")  # split_gla.py's kernels
    state = apply_cuda_chunk_state_gla if gla else apply_cuda_chunk_state
    {"prep": apply_cuda_chunk_prep, "state": state, "state_local": state, "carry": apply_cuda_per_thread,
     "fused": apply_cuda_chunk_fused,
     "cumsum": apply_cuda_per_thread,
     "output": apply_cuda_chunk_output_gla if gla else apply_cuda_chunk_output}[part](
        sch, variant, dtype, tunable=tunable)


def apply_cuda_recurrent(sch: Schedule, variant: LinearVariant) -> None:
    """Schedule a recurrent-form PrimFunc (built with ``variant.block_v``, state scope "local", vector
    scope "shared"): one thread per state column ``j``, tokens in order. The K-loops over the state
    are unrolled, so a thread's K state values have constant indices and live in registers."""
    n, h, jv = sch.get_loops("tile")
    sch.bind(jv, "blockIdx.x")
    sch.bind(h, "blockIdx.y")
    sch.bind(n, "blockIdx.z")
    for blk in _descendants(sch, sch.get_sblock("tile")):
        for lp in sch.get_loops(blk):
            name = sch.get(lp).loop_var.name
            if name == "j":
                sch.bind(lp, "threadIdx.x")
            elif name == "kk" and sch.get(blk).name_hint != "qk_load":
                sch.unroll(lp)
    f = sch.fuse(*sch.get_loops("qk_load")[-2:])  # q_t and k_t: 2K values staged by all threads
    _, tx = sch.split(f, [None, variant.block_v])
    sch.bind(tx, "threadIdx.x")


def _descendants(sch: Schedule, blk) -> list:
    out = []
    for child in sch.get_child_blocks(blk):
        out += [child, *_descendants(sch, child)]
    return out


def apply_cuda_parallel(sch: Schedule, variant: LinearVariant, dtype: str, *, block_m: int,
                        tunable: bool = False) -> None:
    """Schedule a parallel-form PrimFunc (tile scope "shared.dyn"): one CTA per (sequence, head, value
    tile, query tile); Q Kᵀ and P V of every key tile on tensor cores, the decay mask on CUDA cores."""
    intrin = dict(mma_intrins(dtype), store_f32="mma_store_16x16_f32_shared_dyn_simple_")
    n, h, jv, qt = sch.get_loops("tile")
    sch.bind(qt, "blockIdx.x")
    sch.bind(sch.fuse(h, jv), "blockIdx.y")
    sch.bind(n, "blockIdx.z")
    gemms = {name: _tc_tiles(sch, name) for name in ("A_gemm", "O_gemm") if _has(sch, name)}
    tiles = block_m // 16  # both matmuls have the query tile's rows
    warps = min(variant.warps, tiles)
    nw, _ = sch.sample_perfect_tile(gemms["O_gemm"][1], n=2, max_innermost_factor=tiles,
                                    decision=None if tunable else [warps, tiles // warps])
    operands = {"A_gemm": ("Q_s", "K_s", True), "O_gemm": ("P_s", "V_s", False)}
    for name, tiles_of in gemms.items():
        _tc_gemm(sch, name, tiles_of, *operands[name], nw, intrin)
    for name in ("Q_load", "O_init", "K_load", "V_load", "P_mask", "O_store"):
        _spread(sch, sch.get_loops(name)[-2:], nw)
    for name in ("Q_load", "K_load", "P_mask", "V_load"):
        sch.storage_align(sch.get_sblock(name), 0, axis=-2, factor=32, offset=8)
    _spread(sch, sch.get_loops("O_acc")[-3:-1], nw)
    if _has(sch, "A_gated"):  # (i, j) spread, the gated dot product serial per thread
        _spread_reduction(sch, "A_gated", 2, nw)


def cuda_space(form: str, variant: LinearVariant, dtype: str, *, chunk: int = 0, key_dim: int = 0,
               part: str = ""):
    """MetaSchedule space function over one chunk- or parallel-form variant (``part``: one kernel of the
    split chunk form): the warp count (``sample_perfect_tile``) and, for the single chunk kernel, the
    unroll depth of the chunk loop (``sample_categorical``); the split kernels' tiles and pipeline depth
    are compute variants."""

    def space(sch: Schedule) -> None:
        if part:
            apply_cuda_chunk_part(sch, part, variant, dtype, tunable=True)
        elif form == "chunk":
            apply_cuda_chunk(sch, variant, dtype, chunk=chunk, key_dim=key_dim, tunable=True)
        else:
            apply_cuda_parallel(sch, variant, dtype, block_m=64, tunable=True)

    return space
