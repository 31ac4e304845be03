"""torch.library custom ops of the linear-attention family: one op per public function, zero-copy
kernel calls (DLPack through tvm-ffi), CPU and CUDA, opaque to torch.compile (fake implementations
give the output shapes).

Every op has one signature:

    (q, k, v, g, beta, initial_state, cu_seqlens, form, scale, chunk_size) -> (o, final_state)

``g`` / ``beta`` are None where the op has no such input (``beta`` carries η for ttt_linear;
``chunk_size`` is its mini-batch size). ``final_state`` is fp32 [N, H, K, V] for the chunk and
recurrent forms and an empty tensor for the parallel form (it keeps no state). The public,
argument-checking functions are in ``api.py``; these ops assume checked inputs.
"""
from __future__ import annotations

import functools
import math

import torch

from .build import LinearSpec, get
from .kinds import OP_KINDS, SEGMENT_TILING, SPLIT_TILINGS

# ops whose CUDA chunk form runs as the split kernels of ``split.py`` (prep, state, output)
# (``split_gla.py`` for gla)
SPLIT_OPS = ("linear_attention", "simple_gla", "gla", "delta_rule", "gated_delta_rule")


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _segment_cumsum(g: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """Cumulative log decay along T, restarting at every sequence start (fp32)."""
    cs = g.float().cumsum(1)
    if cu_seqlens is None:
        return cs.contiguous()
    pos = torch.arange(g.shape[1], device=g.device)
    start = cu_seqlens[torch.searchsorted(cu_seqlens[1:], pos, right=True)].long()  # [T]
    before = torch.cat([torch.zeros_like(cs[:, :1]), cs], 1)[:, start]  # cumsum up to start - 1
    return (cs - before).contiguous()


def _chunk_local_cumsum(op: str, g: torch.Tensor, cu_seqlens: torch.Tensor | None, chunk_indices: torch.Tensor | None,
                        chunk: int, kd: int, vd: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Cumulative log decay from each chunk's first row (chunks of ``chunk`` rows counted from every
    sequence's start), fp32, shaped like ``g`` ([B, T, H], or [B, T, H, K] for gla): the ``cumsum``
    kernel (``split.gate_cumsum``: one thread per chunk and head[, key channel], an exact fp32 sum of the
    chunk's rows; ``chunk_indices`` from ``_chunk_layout`` when varlen). Rows are only written inside
    their sequence (every row of ``g`` is). The kernel reads fp16 / bf16 / fp32 gates as they are (its
    spec's dtype is the gate's), other dtypes as fp32. ``out``: the fp32 result's tensor (else allocated)."""
    varlen = cu_seqlens is not None
    if g.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        g = g.float()
    g = g.contiguous()
    gc = torch.empty(g.shape, dtype=torch.float32, device=g.device) if out is None else out
    get(LinearSpec(op, "chunk", kd, vd, _dtype_name(g), varlen, chunk, "cumsum"), g.device)(
        g, *([cu_seqlens, chunk_indices] if varlen else []), gc)
    return gc


def _chunk_offsets(cu: list[int], chunk: int) -> list[int]:
    """Each sequence's first chunk in the varlen chunk index space (host copy of ``cu_seqlens``), and the
    number of chunks in all last."""
    offsets = [0]
    for s, e in zip(cu, cu[1:]):
        offsets.append(offsets[-1] + math.ceil((e - s) / chunk))
    return offsets


def _chunk_layout(cu_seqlens: torch.Tensor | None, b: int, t: int, chunk: int, offsets: list[int] | None = None):
    """(chunks in all, chunk_offsets [N + 1], chunk_indices [chunks, 2] = (sequence, chunk of it)) of the
    split kernels; the varlen index tensors are built from host chunk offsets (``offsets``, else from
    one read of ``cu_seqlens``)."""
    if cu_seqlens is None:
        return b * math.ceil(t / chunk), None, None
    offsets = _chunk_offsets(cu_seqlens.tolist(), chunk) if offsets is None else offsets
    indices = [(n, c) for n in range(len(offsets) - 1) for c in range(offsets[n + 1] - offsets[n])]
    dev = cu_seqlens.device
    return (offsets[-1], torch.tensor(offsets, dtype=torch.int32, device=dev),
            torch.tensor(indices, dtype=torch.int32, device=dev).view(-1, 2))


def _segment_plan(bounds: tuple[int, ...], bases: tuple[int, ...], chunk: int, seg_chunks: int, device):
    """Index tensors of a state pass split along the sequence: sequence n (rows ``bounds[n] ..
    bounds[n + 1]`` of the flattened tokens, its first chunk row of h ``bases[n]``) cut into segments of
    ``seg_chunks`` whole chunks (its last one shorter; an empty sequence is one empty segment). Returns
    (seg_cu [S + 1] (the segments as varlen sequences), seg_chunk_offsets [S + 1] (their first chunk
    rows of h), seg_rows [P, 2] (row ranges of the segments the local pass walks: all but each
    sequence's last), seg_offsets [N + 1] (each sequence's first segment), last [N] (its last one))."""
    cu, offs, rows, first, last = [], [], [], [0], []
    step = seg_chunks * chunk
    for n in range(len(bounds) - 1):
        bos, eos = bounds[n], bounds[n + 1]
        count = max(1, math.ceil((eos - bos) / step))
        for i in range(count):
            cu.append(bos + i * step)
            offs.append(bases[n] + i * seg_chunks)
            if i < count - 1:
                rows.append((bos + i * step, bos + (i + 1) * step))
        first.append(first[-1] + count)
        last.append(first[-1] - 1)
    cu.append(bounds[-1])
    offs.append(offs[-1] if offs else 0)

    def as_tensor(x, *shape):
        return torch.tensor(x, dtype=torch.int32, device=device).view(*shape)

    return (as_tensor(cu, -1), as_tensor(offs, -1), as_tensor(rows, -1, 2), as_tensor(first, -1),
            as_tensor(last, -1).long())


_dense_segment_plan = functools.lru_cache(maxsize=64)(_segment_plan)  # dense shapes repeat: upload once


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _tiles_per_pair(part: str, op: str, kd: int, vd: int, tiles: str = "") -> int:
    """CTAs per (sequence, head) of the state or fused kernel (``part``) in tiling ``tiles`` ("" the default)."""
    from ...schedules.linear import default_split_variant

    gate, rule = OP_KINDS[op]
    var = default_split_variant(part, rule, gate, tiles)
    return math.ceil(vd / min(var.block_v, vd)) * math.ceil(kd / min(var.block_k or kd, kd))



# a state tiling "fills the card" when its CTAs number at least this share of the SMs (a 128-CTA grid,
# one wave, on the H200's 132 SMs beat twice as many narrower tiles)
STATE_FILL = 0.9


def state_tiling(op: str, n: int, h: int, kd: int, vd: int, device: torch.device) -> str:
    """The state kernel's tiling for ``n`` sequences of ``h`` heads: of its ``kinds.SPLIT_TILINGS``, the
    one with the fewest CTAs per (sequence, head) whose CTAs still fill the card, else the default (the
    narrowest tiles, for the long-sequence, few-heads shapes where the chunk loop's latency is all there
    is). Wider tiles re-read less of the chunk's operands per state element (the add rule's "many" /
    "mid": 2 tiles of 64 x 128 / 4 of 64 x 64 per pair instead of 8 of 32 x 64; the delta rule's "v32" /
    "v64": value tiles 2x / 4x the default's 16, each reading K and W whole every chunk); narrower ones
    keep more SMs busy."""
    gate, rule = OP_KINDS[op]
    named = SPLIT_TILINGS.get(("state", rule, gate), ())
    if device.type != "cuda" or not named:
        return ""
    fill = STATE_FILL * _sm_count(_index(device))
    ctas = {t: _tiles_per_pair("state", op, kd, vd, t) for t in named}
    for tiles in sorted(named, key=ctas.get):  # (at K or V = 64 a wider tiling may equal the default)
        if ctas[tiles] < _tiles_per_pair("state", op, kd, vd, "") and n * h * ctas[tiles] >= fill:
            return tiles
    return ""


# chunk sizes the fused kernel runs at: 64, where it was measured (at 128 the delta rules' tiles exceed an
# SM's shared memory, the add rule's fit one CTA per SM; below 64 a chunk has fewer 16-row tiles than the
# 64-wide value tile, so Q Kᵀ's tiles would cap its warps below the 4 that own the state's rows)
FUSED_CHUNKS = (64,)


def fused_pass(op: str, n: int, h: int, kd: int, vd: int, chunk: int, device: torch.device) -> bool:
    """Whether the state and output passes run as one kernel (``split_fused``: no h, and for the delta
    rules no V', stored and read back): when one CTA per (sequence, head, value tile) walking every
    chunk fills the card (CUDA; not gla; chunk sizes ``FUSED_CHUNKS``). With fewer pairs the state
    recurrence is the whole call's latency and the split kernels spread it (and the output) over the card."""
    gate, rule = OP_KINDS[op]
    if device.type != "cuda" or gate == "vector" or chunk not in FUSED_CHUNKS:
        return False
    return n * h * _tiles_per_pair("fused", op, kd, vd) >= STATE_FILL * _sm_count(_index(device))


def long_sequences(chunk_offsets: list[int] | None, n: int) -> int:
    """The sequences that count towards ``fused_pass``: all ``n`` when dense; when varlen (host chunk
    offsets) those at least half as long as the longest, in chunks. The fused kernel walks each sequence
    in one CTA, doing the output's work as well as the state's per chunk: a batch of many short sequences
    and one long one keeps the split kernels, whose output kernel spreads the long one's chunks."""
    if chunk_offsets is None:
        return n
    chunks = [e - s for s, e in zip(chunk_offsets, chunk_offsets[1:])]
    return sum(2 * c >= max(chunks, default=0) for c in chunks)


# the add rule's state pass split along the sequence (``state_segment_chunks``): no segment shorter
SEGMENT_MIN_CHUNKS = 32


def state_segment_chunks(op: str, n: int, h: int, kd: int, vd: int, max_chunks: int, device: torch.device) -> int:
    """Chunks per segment when the state pass of ``n`` sequences (the longest ``max_chunks`` chunks) of
    ``h`` heads runs split along the sequence, 0 when it runs whole (add rule, scalar or no gate).

    The state recurrence is one CTA per (sequence, head, state tile) walking every chunk in order. When
    even the small default tiles leave SMs idle (a long sequence, few heads), the pass is split into
    segments: a first pass computes each segment's state from zero (``state_local``, all segments at
    once, no h stored), ``carry`` chains them, and the state pass proper runs on every segment at once
    from its incoming state: about twice the work, spread over the card. Those two passes use the
    whole-state tiling (``kinds.SEGMENT_TILING``): with many CTAs per SM the small tiles' re-reads of
    K and V (each key tile re-reads V, each value tile K) made the split passes slower than the whole
    one on an H200, the whole state per CTA made them faster (simple_gla, (1, 32768, 16, 128):
    0.516 vs 0.588 ms; bench/results/h200/linear-segmented-state-20261128.json). One segment per SM
    and no segment under ``SEGMENT_MIN_CHUNKS`` (shorter ones lost to the whole pass)."""
    gate, rule = OP_KINDS[op]
    if device.type != "cuda" or rule != "add" or gate == "vector":
        return 0
    sms = _sm_count(_index(device))
    if n * h * _tiles_per_pair("state", op, kd, vd, "") > sms:  # the whole pass's small tiles already fill the card
        return 0
    pieces = sms // (n * h * _tiles_per_pair("state", op, kd, vd, SEGMENT_TILING))
    if pieces < 2:
        return 0
    seg = math.ceil(max_chunks / pieces)
    return seg if SEGMENT_MIN_CHUNKS <= seg < max_chunks else 0


# the fused kernel run on segments (``fused_segment_chunks``): as many segments as keep the CTAs within this
# many per SM (the add rule's fused kernel fits two), none shorter than FUSED_SEGMENT_MIN_CHUNKS (16-chunk
# segments were the fastest measured at (1, 8192, 16, 128) on an H200; shorter ones were not measured)
FUSED_SEGMENT_FILL = 2.0
FUSED_SEGMENT_MIN_CHUNKS = 16


def fused_segment_chunks(op: str, n: int, h: int, kd: int, vd: int, chunk: int, max_chunks: int,
                         device: torch.device) -> int:
    """Chunks per segment when the fused state and output kernel runs on the sequences split along their
    length, 0 when it does not (add rule, scalar or no gate, chunk sizes ``FUSED_CHUNKS``).

    With too few (sequence, head) pairs for ``fused_pass`` the fused kernel's CTAs would leave SMs idle.
    Split into segments, the add rule's state recurrence becomes parallel: a segment-local pass gives each
    segment's own state change, the carry chains them into every segment's incoming state (as in the
    segmented state pass, ``state_segment_chunks``), and the fused kernel walks every segment at once
    from its incoming state: no h stored and read back. As many segments per sequence as keep the CTAs
    within ``FUSED_SEGMENT_FILL`` x the SMs (at least two), none shorter than ``FUSED_SEGMENT_MIN_CHUNKS``
    (simple_gla on an H200: (1, 32768, 16, 128) 0.478 -> 0.369 ms, (2, 8192) 0.217 -> 0.198, (1, 8192)
    0.151 -> 0.112; bench/results/h200/linear-segment-fused-20261203.json)."""
    gate, rule = OP_KINDS[op]
    if device.type != "cuda" or rule != "add" or gate == "vector" or chunk not in FUSED_CHUNKS:
        return 0
    sms = _sm_count(_index(device))
    ctas = n * h * _tiles_per_pair("fused", op, kd, vd)
    if ctas >= STATE_FILL * sms:  # the fused kernel fills the card unsplit
        return 0
    pieces = int(FUSED_SEGMENT_FILL * sms // ctas)  # (rounded down: no second wave for a few segments)
    seg = math.ceil(max_chunks / max(pieces, 2))
    return seg if FUSED_SEGMENT_MIN_CHUNKS <= seg < max_chunks else 0


def run_chunk_split(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
                    beta: torch.Tensor | None, initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                    scale: float, chunk_size: int, *, out: torch.Tensor | None = None,
                    final_state: torch.Tensor | None = None,
                    segment_chunks: int | None = None, fused: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk form of ``op`` (one of ``SPLIT_OPS``) as the kernels of ``split.py`` launched in
    sequence: prep (delta rules), state, output (or for many pairs the state and output as one kernel,
    ``split_fused.py``). Scratch in the operand dtype (fp32 on the CPU):
    per-chunk states h [chunks, H, V, K] (transposed; [chunks, H, K, V] for gla), and for the delta rules
    W, U and V' shaped like k / v. ``fused``: the state and output as one kernel (None: ``fused_pass``
    or ``fused_segment_chunks`` decides; ignored for gla). ``segment_chunks``: the add rule's recurrence
    split along the sequence into segments of that many chunks, then the state pass or the fused kernel
    run on the segments (0: whole; None: ``fused_segment_chunks`` decides when fused,
    ``state_segment_chunks`` when not; ignored for gla and the delta rules)."""
    gate, rule = OP_KINDS[op]
    b, t, h, kd = q.shape
    vd = v.shape[-1]
    dev = q.device
    varlen = cu_seqlens is not None
    n = cu_seqlens.shape[0] - 1 if varlen else b
    sdt = torch.float32 if dev.type == "cpu" else q.dtype

    def kern(part: str, tiles: str = ""):
        return get(LinearSpec(op, "chunk", kd, vd, _dtype_name(q), varlen, chunk_size, part, tiles), dev)

    cu = cu_seqlens.tolist() if varlen else None  # (one host read)
    cu_offs = _chunk_offsets(cu, chunk_size) if varlen else None
    n_chunks, offsets, indices = _chunk_layout(cu_seqlens, b, t, chunk_size, cu_offs)
    gc = ([_chunk_local_cumsum(op, g, cu_seqlens, indices, chunk_size, kd, vd)]
          if gate != "none" else [])
    seqs, offs, idx = ([cu_seqlens], [offsets], [indices]) if varlen else ([], [], [])
    # no initial state: an empty h0, which the state kernels (and the carry) read as zero
    h0 = (torch.empty((0, h, kd, vd), dtype=torch.float32, device=dev) if initial_state is None
          else initial_state.float().contiguous())
    ht = torch.empty((n, h, kd, vd), dtype=torch.float32, device=dev) if final_state is None else final_state
    o = torch.empty(v.shape, dtype=q.dtype, device=dev) if out is None else out
    max_chunks = max((e - s for s, e in zip(cu_offs, cu_offs[1:])), default=0) if varlen \
        else math.ceil(t / chunk_size)
    n_long = long_sequences(cu_offs, n)
    fused_seg = fused_segment_chunks(op, n_long, h, kd, vd, chunk_size, max_chunks, dev)
    if fused is None:
        fused = fused_pass(op, n_long, h, kd, vd, chunk_size, dev) or fused_seg > 0
    fuse = gate != "vector" and fused
    if segment_chunks is None:
        segment_chunks = fused_seg if fuse else state_segment_chunks(op, n, h, kd, vd, max_chunks, dev)
    seg = segment_chunks if rule == "add" and gate != "vector" and 0 < segment_chunks < max_chunks else 0
    if rule == "delta":
        w = torch.empty(k.shape, dtype=sdt, device=dev)
        u = torch.empty(v.shape, dtype=sdt, device=dev)
        kern("prep")(k, v, *gc, beta.float().contiguous(), *seqs, *idx, w, u)
    if fuse and seg:  # (no h: the segments' incoming states only)
        _segmented(op, q, k, v, gc, h0, cu, cu_offs, b, t, chunk_size, seg, ht, o=o, scale=scale)
        return o, ht
    if fuse:  # (no h, no V')
        kern("fused")(q, k, *([w, u] if rule == "delta" else [v]), *gc, h0, *seqs, o, ht, scale)
        return o, ht
    # each chunk's incoming state, transposed ([K, V] for gla, whose decay scales the state's rows)
    hs = torch.empty((n_chunks, h, kd, vd) if gate == "vector" else (n_chunks, h, vd, kd), dtype=sdt, device=dev)
    if rule == "delta":
        vn = torch.empty(v.shape, dtype=sdt, device=dev)
        kern("state", state_tiling(op, n, h, kd, vd, dev))(k, w, u, *gc, h0, *seqs, *offs, hs, vn, ht)
        kern("output")(q, k, vn, *gc, hs, *seqs, *idx, o, scale)
    else:
        if seg:
            _segmented(op, q, k, v, gc, h0, cu, cu_offs, b, t, chunk_size, seg, ht, hs=hs)
        else:
            kern("state", state_tiling(op, n, h, kd, vd, dev))(k, v, *gc, h0, *seqs, *offs, hs, ht)
        kern("output")(q, k, v, *gc, hs, *seqs, *idx, o, scale)
    return o, ht


def _segmented(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gc: list, h0: torch.Tensor,
               cu: list[int] | None, cu_offs: list[int] | None, b: int, t: int, chunk: int, seg_chunks: int,
               ht: torch.Tensor, *, hs: torch.Tensor | None = None, o: torch.Tensor | None = None,
               scale: float = 1.0) -> None:
    """The add rule's recurrence split along the sequence into segments of ``seg_chunks`` chunks
    (``state_segment_chunks``, ``fused_segment_chunks``): the segment-local pass and the carry (each
    segment's incoming state), then on the segments as a varlen batch either the state pass (``hs``
    given: writes the same h as the whole pass; both passes in the whole-state tiling) or the fused
    state and output kernel (``o`` given: writes the output). Writes the final states ``ht``. Dense
    inputs are viewed as one flattened sequence of rows."""
    _, _, h, kd = k.shape
    vd = v.shape[-1]
    dev = k.device
    if cu is None:
        bounds, bases = tuple(range(0, b * t + 1, t)), tuple(n * math.ceil(t / chunk) for n in range(b))
        seg_cu, seg_offs, seg_rows, seg_first, last = _dense_segment_plan(bounds, bases, chunk, seg_chunks, dev)
        q, k, v = q.view(1, b * t, h, kd), k.view(1, b * t, h, kd), v.view(1, b * t, h, vd)
        o = None if o is None else o.view(1, b * t, h, vd)
        gc = [g.view(1, b * t, h) for g in gc]
    else:
        seg_cu, seg_offs, seg_rows, seg_first, last = _segment_plan(tuple(cu), tuple(cu_offs), chunk, seg_chunks, dev)
    gated = bool(gc)

    def kern(part: str, tiles: str = SEGMENT_TILING):
        return get(LinearSpec(op, "chunk", kd, vd, _dtype_name(k), True, chunk, part, tiles), dev)

    f32 = {"dtype": torch.float32, "device": dev}
    n_local, n_seg = seg_rows.shape[0], seg_cu.shape[0] - 1
    ht_local = torch.empty((n_local, h, kd, vd), **f32)
    gt = [torch.empty((n_local, h), **f32)] if gated else []
    kern("state_local")(k, v, *gc, seg_rows, ht_local, *gt)
    hin = torch.empty((n_seg, h, kd, vd), **f32)
    kern("carry", "")(ht_local, *gt, h0, seg_first, hin)
    ht_seg = torch.empty((n_seg, h, kd, vd), **f32)
    if hs is not None:
        kern("state")(k, v, *gc, hin, seg_cu, seg_offs, hs, ht_seg)
    else:
        kern("fused", "")(q, k, v, *gc, hin, seg_cu, o, ht_seg, scale)
    torch.index_select(ht_seg, 0, last, out=ht)


def run_kernel(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
               beta: torch.Tensor | None, initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
               form: str, scale: float, chunk_size: int, *, out: torch.Tensor | None = None,
               final_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the compiled kernel of ``op`` / ``form`` (destination-passing: ``out`` [B, T, H, V] and
    ``final_state`` [N, H, K, V] fp32 are allocated here unless given, e.g. NaN-filled by a test)."""
    if form == "chunk" and op in SPLIT_OPS and q.device.type == "cuda":
        return run_chunk_split(op, q, k, v, g, beta, initial_state, cu_seqlens, scale, chunk_size, out=out,
                               final_state=final_state)
    gate, rule = OP_KINDS[op]
    b, t, h, kd = q.shape
    vd = v.shape[-1]
    varlen = cu_seqlens is not None
    n = cu_seqlens.shape[0] - 1 if varlen else b
    chunk = chunk_size if (form == "chunk" or rule == "ttt") else 0
    kern = get(LinearSpec(op, form, kd, vd, _dtype_name(q), varlen, chunk), q.device)
    o = torch.empty(v.shape, dtype=q.dtype, device=q.device) if out is None else out
    args: list = [q, k, v]
    if form == "parallel":
        if gate != "none":
            args.append(_segment_cumsum(g, cu_seqlens))
        max_seqlen = t
        if varlen:
            args.append(cu_seqlens)
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())  # a host read
        kern(*args, o, max_seqlen, scale)
        return o, o.new_empty((0,), dtype=torch.float32)
    if gate != "none":
        args.append(g.float().contiguous())
    if rule != "add":
        args.append(beta.float().contiguous())
    h0 = (torch.zeros((n, h, kd, vd), dtype=torch.float32, device=q.device) if initial_state is None
          else initial_state.float().contiguous())
    args.append(h0)
    if varlen:
        args.append(cu_seqlens)
    ht = torch.empty((n, h, kd, vd), dtype=torch.float32, device=q.device) if final_state is None else final_state
    kern(*args, o, ht, scale)
    return o, ht


def _fake(q, k, v, g, beta, initial_state, cu_seqlens, form, scale, chunk_size):
    n = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else q.shape[0]
    o = q.new_empty((*q.shape[:-1], v.shape[-1]))
    if form == "parallel":
        return o, q.new_empty((0,), dtype=torch.float32)
    return o, q.new_empty((n, q.shape[2], q.shape[3], v.shape[-1]), dtype=torch.float32)


def _register(op: str):
    def impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
             beta: torch.Tensor | None, initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
             form: str, scale: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return run_kernel(op, q, k, v, g, beta, initial_state, cu_seqlens, form, scale, chunk_size)

    impl.__name__ = op
    custom = torch.library.custom_op(f"tvm_attn::{op}", impl, mutates_args=(), device_types=("cpu", "cuda"))
    custom.register_fake(_fake)
    return custom


OPS = {op: _register(op) for op in OP_KINDS}
