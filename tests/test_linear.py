"""Linear-attention family (linear_attention, simple_gla, gla, delta_rule, gated_delta_rule, ttt_linear).

Every op and form against the op's one fp32 reference (tight tolerance in fp32, FlashAttention's rule
for fp16/bf16), kernels called with NaN-poisoned outputs and final states; awkward lengths, several
chunk sizes, uneven varlen batches with a zero-length sequence, initial and final states, chained
calls; the family identities; CUDA schedules generating tensor-core code that nvcc compiles for sm_90a.
CPU always; CUDA numerics where a GPU is present.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import sys

import pytest
import torch

import tvm_attn
from tvm_attn.ops.linear import FORMS_OF, make_inputs
from tvm_attn.ops.linear.kinds import OP_KINDS
from tvm_attn.ops.linear.reference import REFERENCES, simple_gla_ref
from tvm_attn.ops.linear.torch_ops import SPLIT_OPS, run_chunk_split, run_kernel

from conftest import LOW_DTYPES, assert_fa_rule, requires_cuda

OP_FORMS = [(op, form) for op in OP_KINDS for form in FORMS_OF[op]]
LENGTHS = (1, 63, 64, 65, 1000)
MINI_BATCH = 16  # ttt_linear's mini-batch in these tests


def _ids(case) -> str:
    return "-".join(map(str, case))


def shape(t: int | None = None, *, b: int = 2, h: int = 2, kd: int = 32, vd: int = 32,
          seqlens: list[int] | None = None) -> dict:
    s = {"H": h, "K": kd, "V": vd}
    return {**s, "seqlens": seqlens} if seqlens is not None else {**s, "B": b, "T": t}


def extras(op: str, inp: dict) -> tuple:
    """(g, beta) as the kernels take them (ttt_linear's eta travels as beta)."""
    return inp.get("g"), inp.get("beta", inp.get("eta"))


def reference(op: str, inp: dict, *, initial_state, upcast: bool = True, mini_batch: int = MINI_BATCH):
    kw = {"mini_batch_size": mini_batch} if op == "ttt_linear" else {}
    return REFERENCES[op](**inp, **kw, initial_state=initial_state, output_final_state=True, upcast=upcast)


def poisoned(op: str, form: str, inp: dict, *, initial_state, chunk: int, split: bool = False):
    """The compiled kernel called directly, its output and final state filled with NaN beforehand
    (``split``: the chunk form's split kernels, whatever the device)."""
    q, v = inp["q"], inp["v"]
    cu = inp.get("cu_seqlens")
    n = cu.shape[0] - 1 if cu is not None else q.shape[0]
    out = torch.full(v.shape, float("nan"), dtype=q.dtype, device=q.device)
    final = torch.full((n, q.shape[2], q.shape[3], v.shape[3]), float("nan"), device=q.device)
    scale = 1.0 / math.sqrt(q.shape[-1])
    if split:
        o, ht = run_chunk_split(op, inp["q"], inp["k"], v, *extras(op, inp), initial_state, cu, scale, chunk,
                                out=out, final_state=final)
    else:
        o, ht = run_kernel(op, inp["q"], inp["k"], v, *extras(op, inp), initial_state, cu, form, scale, chunk,
                           out=out, final_state=None if form == "parallel" else final)
    assert o.data_ptr() == out.data_ptr()
    return o, (None if form == "parallel" else final)


def state_for(inp: dict, form: str, seed: int = 1):
    if form == "parallel":
        return None
    q, v = inp["q"], inp["v"]
    cu = inp.get("cu_seqlens")
    n = cu.shape[0] - 1 if cu is not None else q.shape[0]
    gen = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(n, q.shape[2], q.shape[3], v.shape[3], generator=gen)).to(q.device)


def assert_fp32(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    assert not torch.isnan(out).any(), f"{name}: NaN in the output (an element was never written?)"
    err = float((out - ref).abs().max())
    bound = 1e-5 + 2e-5 * float(ref.abs().max())
    assert err <= bound, f"{name}: max error {err:.3e} > {bound:.3e}"


def check(name: str, op: str, form: str, inp: dict, *, chunk: int, dtype: str, split: bool = False,
          initial: bool = True) -> None:
    h0 = state_for(inp, form) if initial else None
    o, ht = poisoned(op, form, inp, initial_state=h0, chunk=chunk, split=split)
    mb = chunk if op == "ttt_linear" else MINI_BATCH
    ref, ref_ht = reference(op, inp, initial_state=h0, mini_batch=mb)
    assert o.dtype == LOW_DTYPES[dtype]
    if dtype == "float32":
        assert_fp32(f"{name} o", o, ref)
        if ht is not None:
            assert_fp32(f"{name} final state", ht, ref_ht)
        return
    ref_lowp, ref_ht_lowp = reference(op, inp, initial_state=h0, upcast=False, mini_batch=mb)
    assert_fa_rule(f"{name} o", o, ref, ref_lowp)
    if ht is not None:
        assert_fa_rule(f"{name} final state", ht, ref_ht, ref_ht_lowp)


def chunk_of(op: str) -> int:
    return MINI_BATCH if op == "ttt_linear" else 64


# ------------------------------------------------------------------------------------------------
# every op and form against the one reference (CPU)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,form", OP_FORMS, ids=[_ids(c) for c in OP_FORMS])
def test_against_reference(op: str, form: str):
    for t in LENGTHS:
        for dtype in ("float32", "float16", "bfloat16"):
            if t == 1000 and dtype != "float32" and form == "parallel":
                continue  # the quadratic form at T = 1000 in fp32 covers it; low-precision runs stay short
            inp = make_inputs(op, shape(t, b=1 if t == 1000 else 2), dtype, "cpu", seed=t)
            check(f"{op} {form} T={t} {dtype}", op, form, inp, chunk=chunk_of(op), dtype=dtype)


@pytest.mark.parametrize("op", ["simple_gla", "gla", "gated_delta_rule", "delta_rule", "linear_attention"])
def test_chunk_sizes(op: str):
    inp = make_inputs(op, shape(200), "float32", "cpu", seed=3)
    for c in (16, 32, 128):
        check(f"{op} chunk={c}", op, "chunk", inp, chunk=c, dtype="float32")


def test_ttt_mini_batch_sizes():
    # the mini-batch is semantic for ttt_linear: each size is its own reference; both forms agree with it
    inp = make_inputs("ttt_linear", shape(150), "float32", "cpu", seed=4)
    for mb in (1, 7, 32):
        for form in ("chunk", "recurrent"):
            check(f"ttt mini_batch={mb} {form}", "ttt_linear", form, inp, chunk=mb, dtype="float32")


@pytest.mark.parametrize("op,form", OP_FORMS, ids=[_ids(c) for c in OP_FORMS])
def test_varlen_uneven(op: str, form: str):
    # very different lengths, a one-token sequence, an empty one (its final state is its initial state)
    lens = [37, 200, 1, 0, 129, 64]
    for dtype in ("float32", "bfloat16") if form == "chunk" else ("float32",):
        inp = make_inputs(op, shape(seqlens=lens), dtype, "cpu", seed=5)
        check(f"{op} {form} varlen {dtype}", op, form, inp, chunk=chunk_of(op), dtype=dtype)


# ------------------------------------------------------------------------------------------------
# the split chunk form (the CUDA chunk path: prep, state and output kernels) built for the CPU
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", SPLIT_OPS)
def test_split_chunk_against_reference(op: str):
    # every length against the reference, from a random initial state, outputs and states NaN-poisoned;
    # uneven varlen (a one-token and an empty sequence) in fp32 and from bf16 inputs
    cases = [(shape(t, b=1 if t == 1000 else 2), "float32") for t in LENGTHS]
    cases += [(shape(seqlens=[37, 200, 1, 0, 129, 64]), dtype) for dtype in ("float32", "bfloat16")]
    for s, dtype in cases:
        inp = make_inputs(op, s, dtype, "cpu", seed=17)
        check(f"split {op} {s} {dtype}", op, "chunk", inp, chunk=64, dtype=dtype, split=True)


@pytest.mark.parametrize("op,tiles", [("simple_gla", "many"), ("linear_attention", "mid"), ("gla", "many"),
                                      ("gated_delta_rule", "v32"), ("delta_rule", "v64")])
def test_split_state_tilings_against_reference(op: str, tiles: str, monkeypatch):
    # the state kernel's wider tilings (picked on a GPU once their CTAs fill it), forced: dense with
    # K = V = 128 (several value tiles) and uneven varlen with K 64, fp32 and from bf16 inputs
    from tvm_attn.ops.linear import build, torch_ops

    monkeypatch.setattr(torch_ops, "state_tiling", lambda *a: tiles)
    cases = [(shape(200, b=1, kd=128, vd=128), "float32"), (shape(seqlens=[37, 130, 1, 0, 64], kd=64, vd=128), "bfloat16")]
    for s, dtype in cases:
        inp = make_inputs(op, s, dtype, "cpu", seed=19)
        check(f"split {op} {tiles} {s} {dtype}", op, "chunk", inp, chunk=64, dtype=dtype, split=True)
        assert any(sp.op == op and sp.part == "state" and sp.tiles == tiles and sp.dtype == dtype
                   for sp, _ in build._by_spec), "the forced tiling's kernel was not the one called"


@pytest.mark.parametrize("op", ["linear_attention", "simple_gla", "delta_rule", "gated_delta_rule"])
def test_split_fused_against_reference(op: str, monkeypatch):
    # the state and output passes as one kernel (``split_fused``; picked on a GPU once its CTAs fill it),
    # forced: every length, dense with several value tiles (K = V = 128), uneven varlen with a one-token
    # and an empty sequence, chunk sizes 16 and 64; fp32 and from bf16 inputs, with and without an
    # initial state, outputs and states NaN-poisoned. No h (nor V') is stored: the call never builds the
    # state or output kernels.
    from tvm_attn.ops.linear import build, torch_ops

    monkeypatch.setattr(torch_ops, "fused_pass", lambda *a: True)
    monkeypatch.setattr(build, "_by_spec", {})
    cases = [(shape(t, b=1 if t == 1000 else 2), "float32", 64, True) for t in LENGTHS]
    cases += [(shape(200, b=1, kd=128, vd=128), "bfloat16", 64, True),
              (shape(seqlens=[37, 200, 1, 0, 129, 64]), "float32", 16, True),
              (shape(seqlens=[37, 130, 1, 0, 64], kd=64, vd=128), "bfloat16", 64, False)]
    for s, dtype, c, initial in cases:
        inp = make_inputs(op, s, dtype, "cpu", seed=31)
        check(f"split {op} fused {s} {dtype} chunk={c}", op, "chunk", inp, chunk=c, dtype=dtype, split=True,
              initial=initial)
    parts = {sp.part for sp, _ in build._by_spec if sp.op == op}
    assert "fused" in parts and parts <= {"fused", "cumsum", "prep"}, parts


@pytest.mark.parametrize("op", ["delta_rule", "gated_delta_rule"])
def test_split_delta_state_forms_against_reference(op: str, monkeypatch):
    # the delta rule's state kernel has two computes (``split.state``'s vt: V' formed transposed in
    # registers, the CPU's default; or W·Y with V' through shared memory, the CUDA default tile's): the
    # second built for the CPU, against the reference (dense and uneven varlen, fp32 and bf16 inputs)
    from tvm_attn.ops.linear import build

    monkeypatch.setattr(build, "CPU_DELTA_VT", False)
    monkeypatch.setattr(build, "_by_spec", {})
    cases = [(shape(200, b=2), "float32"), (shape(seqlens=[37, 130, 1, 0, 64]), "bfloat16")]
    for s, dtype in cases:
        inp = make_inputs(op, s, dtype, "cpu", seed=29)
        check(f"split {op} state without vt {s} {dtype}", op, "chunk", inp, chunk=64, dtype=dtype, split=True)
    assert all(k.schedule == "cpu_delta_smem" for (sp, _), k in build._by_spec.items() if sp.part == "state")


@pytest.mark.parametrize("op", ["simple_gla", "gla", "gated_delta_rule"])
def test_split_chunk_sizes(op: str):
    inp = make_inputs(op, shape(seqlens=[100, 17, 33]), "float32", "cpu", seed=18)
    for c in (16, 128):
        check(f"split {op} chunk={c}", op, "chunk", inp, chunk=c, dtype="float32", split=True)


def test_split_gla_strong_decay():
    # channels that forget almost everything every step (log decay -30: 450 nats across a 16-row
    # sub-chunk, far past fp32's range) next to ones that barely decay: every exponent the gla kernels
    # take must stay <= 0, or a factor overflows (inf * 0 = NaN) or underflows a term that matters
    for dtype in ("float32", "bfloat16"):
        inp = make_inputs("gla", shape(seqlens=[70, 1, 33]), dtype, "cpu", seed=21)
        g = inp["g"].clone()
        g[..., ::2] = -30.0
        g[..., 1::4] = -1e-3
        inp["g"] = g
        check(f"split gla strong decay {dtype}", "gla", "chunk", inp, chunk=64, dtype=dtype, split=True)


def test_split_state_tiling_by_shape(monkeypatch):
    # the state kernel's widest tiling whose CTAs fill the card (>= 0.9 x 132 SMs: 119 CTAs), else the
    # default: the add rule's 8 small tiles per (sequence, head), 4 of 64 x 64 or 2 of 64 x 128; the delta rule's
    # value tiles of 16, 32 or 64 (8, 4 or 2 CTAs per pair); gla's 8 tiles of 64 x 32 or its whole state
    from tvm_attn.ops.linear import torch_ops

    monkeypatch.setattr(torch_ops, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    tiling = torch_ops.state_tiling
    assert tiling("simple_gla", 1, 16, 128, 128, cuda) == ""  # 32 CTAs of the large tile: too few
    assert tiling("simple_gla", 8, 16, 128, 128, cuda) == "many"  # 256
    assert tiling("linear_attention", 60, 1, 128, 128, cuda) == "many"  # 120
    assert tiling("linear_attention", 59, 1, 128, 128, cuda) == "mid"  # 118 large tiles: too few; 236 of 64 x 64
    assert tiling("simple_gla", 2, 16, 128, 128, cuda) == "mid"  # 128 of 64 x 64 (64 large tiles: too few)
    assert tiling("linear_attention", 29, 1, 128, 128, cuda) == ""  # 116 of 64 x 64: too few
    assert tiling("linear_attention", 2, 40, 64, 64, cuda) == ""  # K = V = 64: one tile per (sequence, head)
    assert tiling("gated_delta_rule", 8, 16, 128, 128, cuda) == "v64"  # 256 CTAs of 64 values
    assert tiling("gated_delta_rule", 2, 16, 128, 128, cuda) == "v32"  # 128 of 32 (64 of 64: too few)
    assert tiling("delta_rule", 1, 16, 128, 128, cuda) == ""  # 128 of the default 16
    assert tiling("delta_rule", 30, 1, 128, 128, cuda) == "v32"  # 120
    assert tiling("delta_rule", 119, 1, 64, 64, cuda) == "v64"  # V = 64: the whole state per CTA, 119
    assert tiling("delta_rule", 60, 1, 64, 64, cuda) == "v32"  # 60 whole states: too few; 120 halves
    assert tiling("delta_rule", 40, 1, 64, 64, cuda) == ""  # 80 halves: too few
    assert tiling("gla", 8, 16, 128, 128, cuda) == "many"  # 128 whole states
    assert tiling("gla", 4, 16, 128, 128, cuda) == ""  # 64: too few
    assert tiling("simple_gla", 64, 64, 128, 128, torch.device("cpu")) == ""
    # the fused state and output kernel: 2 CTAs of 64 values per (sequence, head) fill the card from 60 pairs;
    # not gla; a varlen batch counts its sequences at least half as long as the longest
    fused = torch_ops.fused_pass
    assert fused("simple_gla", 8, 16, 128, 128, 64, cuda) and fused("gated_delta_rule", 60, 1, 128, 128, 64, cuda)
    assert not fused("linear_attention", 59, 1, 128, 128, 64, cuda)
    assert not fused("delta_rule", 2, 16, 128, 128, 64, cuda)
    assert not fused("gla", 8, 16, 128, 128, 64, cuda)
    assert not fused("simple_gla", 8, 16, 128, 128, 64, torch.device("cpu"))
    assert fused("delta_rule", 119, 1, 64, 64, 64, cuda) and not fused("delta_rule", 118, 1, 64, 64, 64, cuda)  # V = 64
    # chunk 128: the delta rules' fused tiles exceed an SM's shared memory; 32: too few chunk tiles for 4 warps
    assert not fused("gated_delta_rule", 8, 16, 128, 128, 128, cuda)
    assert not fused("simple_gla", 8, 16, 128, 128, 32, cuda)
    assert torch_ops.long_sequences(None, 8) == 8
    assert torch_ops.long_sequences([0, 4, 8, 10, 11], 4) == 3  # 4, 4, 2 chunks of 4 count, 1 not
    assert torch_ops.long_sequences([0, 32] + [32 + i for i in range(1, 64)], 64) == 1  # one long, 63 short
    assert torch_ops.long_sequences([0, 0], 1) == 1


@pytest.mark.parametrize("fused", [False, True], ids=["state", "fused"])
@pytest.mark.parametrize("op", ["simple_gla", "linear_attention"])
def test_split_segmented_against_reference(op: str, fused: bool, monkeypatch):
    # the add rule's recurrence split along the sequence (segment-local pass, carry, then the state pass
    # or the fused state and output kernel on the segments): dense rows and uneven varlen (a one-token
    # and an empty sequence, lengths that end mid-chunk and on a segment boundary), segments of one, two
    # and three chunks, from a random initial state, outputs and final states NaN-poisoned
    from tvm_attn.ops.linear import build, torch_ops

    monkeypatch.setattr(build, "_by_spec", {})
    whole = torch_ops.run_chunk_split
    for s in (shape(300), shape(seqlens=[37, 200, 1, 0, 129, 64, 96])):
        for dtype in ("float32", "bfloat16"):
            inp = make_inputs(op, s, dtype, "cpu", seed=23)
            for seg in (1, 2, 3):
                monkeypatch.setattr(sys.modules[__name__], "run_chunk_split",
                                    lambda *a, **kw: whole(*a, **kw, segment_chunks=seg, fused=fused))
                check(f"split {op} segments of {seg} chunks {'fused ' if fused else ''}{s} {dtype}", op, "chunk",
                      inp, chunk=32, dtype=dtype, split=True)
    parts = {sp.part for sp, _ in build._by_spec if sp.op == op}
    assert parts == {"state_local", "carry", "fused" if fused else "state", *(["output"] if not fused else []),
                     *(["cumsum"] if op == "simple_gla" else [])}, parts


@pytest.mark.parametrize("op", ["simple_gla", "gla", "gated_delta_rule"])
def test_split_without_initial_state(op: str, monkeypatch):
    # no initial state: the state kernels (and the segmented pass's carry) are given an empty h0 and start
    # from zero without reading it; dense and uneven varlen, the add rule also split along the sequence
    from tvm_attn.ops.linear import torch_ops

    whole = torch_ops.run_chunk_split
    for s in (shape(300), shape(seqlens=[37, 200, 1, 0, 129])):
        for dtype in ("float32", "bfloat16"):
            inp = make_inputs(op, s, dtype, "cpu", seed=29)
            check(f"split {op} no initial state {s} {dtype}", op, "chunk", inp, chunk=64, dtype=dtype, split=True,
                  initial=False)
            if op == "simple_gla":
                monkeypatch.setattr(sys.modules[__name__], "run_chunk_split",
                                    lambda *a, **kw: whole(*a, **kw, segment_chunks=2))
                check(f"split {op} segmented, no initial state {s} {dtype}", op, "chunk", inp, chunk=32,
                      dtype=dtype, split=True, initial=False)
                monkeypatch.setattr(sys.modules[__name__], "run_chunk_split", whole)


def test_state_segment_chunks_by_shape(monkeypatch):
    # split along the sequence only while the small default tiles (8 per (sequence, head) at K = V = 128)
    # leave SMs idle: one whole-state segment per SM, none shorter than SEGMENT_MIN_CHUNKS; never for
    # gla or the delta rules, nor on the CPU
    from tvm_attn.ops.linear import torch_ops

    monkeypatch.setattr(torch_ops, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    seg = torch_ops.state_segment_chunks
    assert seg("simple_gla", 1, 16, 128, 128, 512, cuda) == 64  # T = 32768: 8 segments of 16 heads
    assert seg("linear_attention", 1, 16, 128, 128, 1024, cuda) == 128
    assert seg("simple_gla", 1, 16, 128, 128, 256, cuda) == 32
    assert seg("simple_gla", 1, 16, 128, 128, 128, cuda) == 0  # segments of 16 chunks: too short
    assert seg("simple_gla", 2, 16, 128, 128, 512, cuda) == 0  # 256 small tiles fill the card
    assert seg("simple_gla", 1, 4, 128, 128, 2000, cuda) == 61  # 33 segments of 4 heads
    assert seg("simple_gla", 1, 4, 128, 128, 400, cuda) == 0  # 33 segments of 13 chunks: too short
    assert seg("simple_gla", 1, 40, 64, 64, 4096, cuda) == 1366  # K = V = 64: 80 small tiles, 3 segments of 40
    for op in ("gla", "delta_rule", "gated_delta_rule"):
        assert seg(op, 1, 16, 128, 128, 512, cuda) == 0
    assert seg("simple_gla", 1, 16, 128, 128, 512, torch.device("cpu")) == 0


def test_fused_segment_chunks_by_shape(monkeypatch):
    # the fused kernel on segments when its unsplit CTAs (2 per (sequence, head) at V = 128) would leave
    # SMs idle: as many segments as keep the CTAs within 2 per SM, none under 16 chunks; at chunk 64
    # only, never for gla or the delta rules, nor on the CPU; and what the call then runs
    from tvm_attn.ops.linear import build, torch_ops

    monkeypatch.setattr(torch_ops, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    seg = torch_ops.fused_segment_chunks
    assert seg("simple_gla", 1, 16, 128, 128, 64, 512, cuda) == 64  # T = 32768: 8 segments of 32 CTAs
    assert seg("linear_attention", 2, 16, 128, 128, 64, 128, cuda) == 32  # T = 8192: 4 segments per sequence
    assert seg("simple_gla", 1, 16, 128, 128, 64, 128, cuda) == 16
    assert seg("simple_gla", 1, 16, 128, 128, 64, 100, cuda) == 0  # segments of 13 chunks: too short
    assert seg("simple_gla", 4, 16, 128, 128, 64, 64, cuda) == 0  # 128 CTAs: the unsplit kernel fills the card
    assert seg("simple_gla", 3, 16, 128, 128, 64, 512, cuda) == 256  # 96 CTAs: still two segments
    assert seg("simple_gla", 1, 4, 128, 128, 64, 2000, cuda) == 61  # 8 CTAs: 33 segments
    assert seg("simple_gla", 1, 16, 128, 128, 32, 1024, cuda) == 0  # chunk 32
    for op in ("gla", "delta_rule", "gated_delta_rule"):
        assert seg(op, 1, 16, 128, 128, 64, 512, cuda) == 0
    assert seg("simple_gla", 1, 16, 128, 128, 64, 512, torch.device("cpu")) == 0
    # a call the decision sends to the fused kernel on segments (forced here: 4-chunk segments, the
    # kernels built for the CPU) builds no state or output kernel
    monkeypatch.setattr(build, "_by_spec", {})
    monkeypatch.setattr(torch_ops, "fused_segment_chunks", lambda *a: 4)
    inp = make_inputs("simple_gla", shape(1000, b=1), "float32", "cpu", seed=3)
    check("split simple_gla fused on segments (picked)", "simple_gla", "chunk", inp, chunk=64, dtype="float32",
          split=True)
    assert {sp.part for sp, _ in build._by_spec} == {"cumsum", "state_local", "carry", "fused"}


def test_split_chunk_layout_and_cumsum():
    # the varlen chunk index space, and the gates' chunk-local cumsum kernel (``split.gate_cumsum``)
    # against torch's per-chunk cumsum: scalar and per-channel (gla) gates, varlen with an empty
    # sequence, dense with a partial last chunk, bf16 gates summed in fp32; outputs NaN-poisoned
    from tvm_attn.ops.linear.torch_ops import _chunk_layout, _chunk_local_cumsum

    cu = torch.tensor([0, 5, 5, 21, 22], dtype=torch.int32)
    n_chunks, offsets, indices = _chunk_layout(cu, 1, 22, 8)
    assert n_chunks == 4 and offsets.tolist() == [0, 1, 1, 3, 4]
    assert indices.tolist() == [[0, 0], [2, 0], [2, 1], [3, 0]]
    assert _chunk_layout(None, 3, 17, 8)[0] == 9
    nan = lambda g: torch.full(g.shape, float("nan"))  # noqa: E731  (the kernel must write every row)
    for op, g in (("simple_gla", -torch.rand(1, 22, 2)), ("gla", -torch.rand(1, 22, 2, 3))):
        gc = _chunk_local_cumsum(op, g, cu, indices, 8, g.shape[-1] if op == "gla" else 3, 3, out=nan(g))
        assert gc.shape == g.shape and gc.dtype == torch.float32 and gc.is_contiguous()
        for s, e in zip(cu.tolist(), cu.tolist()[1:]):
            for c0 in range(s, e, 8):
                c1 = min(c0 + 8, e)
                torch.testing.assert_close(gc[:, c0:c1], g[:, c0:c1].cumsum(1), rtol=1e-6, atol=1e-6)
    for op, t, rest, dt in (("simple_gla", 19, (3,), torch.float32), ("simple_gla", 16, (3,), torch.bfloat16),
                            ("gla", 19, (3, 4), torch.float32)):  # a padded last chunk, whole chunks; gla
        gd = (-torch.rand(2, t, *rest)).to(dt)
        gcd = _chunk_local_cumsum(op, gd, None, None, 8, rest[-1] if op == "gla" else 4, 4, out=nan(gd))
        assert gcd.shape == gd.shape and gcd.dtype == torch.float32 and gcd.is_contiguous()
        for c0 in range(0, t, 8):
            torch.testing.assert_close(gcd[:, c0:c0 + 8], gd[:, c0:c0 + 8].float().cumsum(1), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# states: decode steps and chained calls
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(OP_KINDS))
def test_decode_steps_continue_a_prefill(op: str):
    # prefill with the chunk form, then one recurrent call per token: the same outputs and final state
    # as one call over the whole sequence (ttt: decode steps are mini-batches of one token, so the
    # whole-sequence reference uses a mini-batch of 1 after the prefill's whole mini-batches)
    fn = getattr(tvm_attn, op)
    inp = make_inputs(op, shape(40, b=1), "float32", "cpu", seed=6)
    names = [n for n in ("g", "beta", "eta") if n in inp]
    cut = 32
    part = lambda lo, hi: {n: inp[n][:, lo:hi] for n in ("q", "k", "v", *names)}
    kw = {"mini_batch_size": MINI_BATCH} if op == "ttt_linear" else {}
    o_pre, state = fn(**part(0, cut), **kw, output_final_state=True)
    outs = [o_pre]
    kw1 = {"mini_batch_size": 1} if op == "ttt_linear" else {}
    for t in range(cut, 40):
        o_t, state = fn(**part(t, t + 1), **kw1, form="recurrent", initial_state=state, output_final_state=True)
        outs.append(o_t)
    o = torch.cat(outs, 1)
    if op == "ttt_linear":
        ref_pre, st = reference(op, part(0, cut), initial_state=None)
        ref_post, ref_state = reference(op, part(cut, 40), initial_state=st, mini_batch=1)
        ref = torch.cat([ref_pre, ref_post], 1)
    else:
        ref, ref_state = reference(op, inp, initial_state=None)
    assert_fp32(f"{op} decode", o, ref)
    assert_fp32(f"{op} decode state", state, ref_state)


def test_ttt_chained_calls_on_mini_batch_boundaries():
    # chaining through initial_state equals one call when every call but the last covers whole mini-batches
    inp = make_inputs("ttt_linear", shape(82, b=1), "float32", "cpu", seed=7)
    part = lambda lo, hi: {n: inp[n][:, lo:hi] for n in ("q", "k", "v", "eta")}
    o1, s1 = tvm_attn.ttt_linear(**part(0, 32), mini_batch_size=16, output_final_state=True)
    o2, s2 = tvm_attn.ttt_linear(**part(32, 82), mini_batch_size=16, initial_state=s1, output_final_state=True)
    o, s = tvm_attn.ttt_linear(**inp, mini_batch_size=16, output_final_state=True)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, s, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# family identities
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(OP_KINDS))
def test_forms_agree(op: str):
    inp = make_inputs(op, shape(130), "float32", "cpu", seed=8)
    fn = getattr(tvm_attn, op)
    kw = {"mini_batch_size": MINI_BATCH} if op == "ttt_linear" else {}
    outs = {form: fn(**inp, **kw, form=form)[0] for form in FORMS_OF[op]}
    for form, o in outs.items():
        torch.testing.assert_close(o, outs["chunk"], rtol=1e-4, atol=1e-4, msg=f"{op}: {form} vs chunk")


def test_delta_rule_is_gated_delta_rule_without_gate():
    inp = make_inputs("gated_delta_rule", shape(100), "float32", "cpu", seed=9)
    zero = torch.zeros_like(inp["g"])
    for form in ("chunk", "recurrent"):
        a, sa = tvm_attn.delta_rule(inp["q"], inp["k"], inp["v"], inp["beta"], form=form, output_final_state=True)
        b, sb = tvm_attn.gated_delta_rule(inp["q"], inp["k"], inp["v"], zero, inp["beta"], form=form,
                                          output_final_state=True)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sa, sb, rtol=1e-5, atol=1e-5)


def test_linear_attention_is_simple_gla_without_gate():
    inp = make_inputs("simple_gla", shape(100), "float32", "cpu", seed=10)
    for form in ("chunk", "recurrent", "parallel"):
        a, _ = tvm_attn.linear_attention(inp["q"], inp["k"], inp["v"], form=form)
        b, _ = tvm_attn.simple_gla(inp["q"], inp["k"], inp["v"], torch.zeros_like(inp["g"]), form=form)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ttt_with_mini_batches_of_one_is_the_delta_rule():
    # one gradient step per token on ½‖Wᵀk − v‖² with rate η is the delta rule with β = η
    inp = make_inputs("ttt_linear", shape(90), "float32", "cpu", seed=11)
    for form in ("chunk", "recurrent"):
        a, sa = tvm_attn.ttt_linear(**inp, mini_batch_size=1, form=form, output_final_state=True)
        b, sb = tvm_attn.delta_rule(inp["q"], inp["k"], inp["v"], inp["eta"], form=form, output_final_state=True)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sa, sb, rtol=1e-5, atol=1e-5)


def test_retnet_is_simple_gla_with_constant_decay():
    from tvm_attn.ops.linear.api import retnet_log_decay

    h = 4
    gamma = 1 - 2.0 ** (-5 - torch.arange(h, dtype=torch.float64))
    torch.testing.assert_close(retnet_log_decay(h).double().exp(), gamma, rtol=1e-6, atol=0)
    inp = make_inputs("simple_gla", shape(100, h=h), "float32", "cpu", seed=12)
    h0 = state_for(inp, "chunk")
    g = gamma.log().float()[None, None, :].expand(2, 100, h)
    ref, ref_state = simple_gla_ref(inp["q"], inp["k"], inp["v"], g, initial_state=h0, output_final_state=True)
    for form in ("chunk", "recurrent"):
        o, state = tvm_attn.retnet(inp["q"], inp["k"], inp["v"], form=form, initial_state=h0, output_final_state=True)
        assert_fp32(f"retnet {form}", o, ref)
        assert_fp32(f"retnet {form} state", state, ref_state)


def test_mamba2_ssd_maps_onto_simple_gla():
    # the SSM recurrence written out: h_t = exp(Δ_t A) h_{t-1} + B_t (Δ_t x_t)ᵀ, y_t = h_tᵀ C_t + D x_t
    gen = torch.Generator().manual_seed(13)
    b, t, h, g_, n, p = 2, 70, 4, 2, 32, 16
    x = torch.randn(b, t, h, p, generator=gen)
    dt = torch.nn.functional.softplus(torch.randn(b, t, h, generator=gen) - 1)
    A = -torch.rand(h, generator=gen) - 0.5
    B = torch.randn(b, t, g_, n, generator=gen) / math.sqrt(n)
    C = torch.randn(b, t, g_, n, generator=gen)
    D = torch.randn(h, generator=gen)
    Bh, Ch = B.repeat_interleave(h // g_, 2), C.repeat_interleave(h // g_, 2)
    state = torch.zeros(b, h, n, p)
    ys = []
    for i in range(t):
        state = torch.exp(dt[:, i] * A)[..., None, None] * state + Bh[:, i, :, :, None] * (dt[:, i, :, None] * x[:, i])[..., None, :]
        ys.append((state * Ch[:, i, :, :, None]).sum(-2) + D[:, None] * x[:, i])
    ref = torch.stack(ys, 1)
    for form in ("chunk", "recurrent", "parallel"):
        y, final = tvm_attn.mamba2_ssd(x, dt, A, B, C, D=D, form=form, output_final_state=form != "parallel")
        assert_fp32(f"mamba2 {form}", y, ref)
        if final is not None:
            assert_fp32(f"mamba2 {form} state", final, state)


# ------------------------------------------------------------------------------------------------
# API, torch op, registry
# ------------------------------------------------------------------------------------------------

def test_api_names_the_bad_argument():
    q = torch.randn(1, 10, 2, 32)
    v = torch.randn(1, 10, 2, 32)
    g = torch.zeros(1, 10, 2)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        tvm_attn.simple_gla(q.numpy(), q, v, g)
    with pytest.raises(ValueError, match="g must have shape"):
        tvm_attn.simple_gla(q, q, v, torch.zeros(1, 10, 2, 32))
    with pytest.raises(ValueError, match="g must have shape"):
        tvm_attn.gla(q, q, v, g)
    with pytest.raises(ValueError, match="form='parallel' exists only"):
        tvm_attn.delta_rule(q, q, v, g, form="parallel")
    with pytest.raises(ValueError, match="form must be one of"):
        tvm_attn.linear_attention(q, q, v, form="fused")
    with pytest.raises(ValueError, match="keeps no state"):
        tvm_attn.linear_attention(q, q, v, form="parallel", output_final_state=True)
    with pytest.raises(ValueError, match="chunk_size must be one of"):
        tvm_attn.linear_attention(q, q, v, chunk_size=48)
    with pytest.raises(ValueError, match="mini_batch_size must be an int"):
        tvm_attn.ttt_linear(q, q, v, g, mini_batch_size=0)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        tvm_attn.linear_attention(q, q, v, initial_state=torch.zeros(2, 2, 32, 32))
    with pytest.raises(ValueError, match="batch size B must be 1"):
        tvm_attn.linear_attention(torch.randn(2, 10, 2, 32), torch.randn(2, 10, 2, 32), torch.randn(2, 10, 2, 32),
                                  cu_seqlens=torch.tensor([0, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        tvm_attn.linear_attention(q, q, v, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(TypeError, match="cu_seqlens must be int32"):
        tvm_attn.linear_attention(q, q, v, cu_seqlens=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="head dim 24 of v"):
        tvm_attn.linear_attention(q, q, torch.randn(1, 10, 2, 24))
    with pytest.raises(TypeError, match="scale must be a finite float"):
        tvm_attn.linear_attention(q, q, v, scale=float("nan"))
    with pytest.raises(TypeError, match="k has dtype"):
        tvm_attn.linear_attention(q, q.half(), v)


def test_nan_check_is_opt_in(monkeypatch):
    inp = make_inputs("gated_delta_rule", shape(10), "float32", "cpu", seed=3)
    monkeypatch.setenv("TVM_ATTN_CHECK_FINITE", "1")
    for name in ("q", "g", "beta"):
        bad = {**inp, name: inp[name].clone()}
        bad[name].view(-1)[0] = float("nan")
        with pytest.raises(ValueError, match=f"{name} contains NaN"):
            tvm_attn.gated_delta_rule(**bad)
    with pytest.raises(ValueError, match="initial_state contains NaN"):
        tvm_attn.linear_attention(inp["q"], inp["k"], inp["v"],
                                  initial_state=torch.full((*inp["q"].shape[::2], 32, 32), float("inf")))


def test_api_scale_and_default_outputs():
    inp = make_inputs("simple_gla", shape(50), "float32", "cpu", seed=14)
    o, state = tvm_attn.simple_gla(**inp, scale=0.3)
    assert state is None and o.shape == inp["v"].shape
    ref, _ = simple_gla_ref(**inp, scale=0.3)
    assert_fp32("scale", o, ref)


def test_torch_op_schema_and_fake():
    inp = make_inputs("gated_delta_rule", shape(20), "float32", "cpu", seed=15)
    args = (inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"], None, None, "chunk", 0.2, 16)
    torch.library.opcheck(torch.ops.tvm_attn.gated_delta_rule.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_registry_entries():
    from tvm_attn import registry

    names = {e.name for e in registry.all_ops() if e.family == "linear"}
    assert names == set(OP_KINDS)
    for op in OP_KINDS:
        e = registry.get(op)
        anchors = {(s["B"], s["T"], s["H"], s["K"]) for s in e.shapes["anchors"]}
        assert anchors == {(1, 32768, 16, 128), (8, 2048, 16, 128), (2, 8192, 16, 128)}
        s = {"B": 2, "T": 128, "H": 2, "K": 64, "V": 64, "form": "chunk", "chunk_size": 64}
        # two full chunks of 64: Q Kᵀ, [Q | P] [S; U] and Kᵀ U per chunk, plus the delta rule's extras
        base = 2 * 64 * 64 * 64 + 2 * 64 * 128 * 64 + 2 * 64 * 64 * 64
        extra = {"add": 0, "delta": 2 * 64 * 64 * 64 + 64 ** 3 // 3 + 2 * 64 * 64 * 128 + 2 * 64 * 64 * 64,
                 "ttt": 2 * 64 * 64 * 64}[OP_KINDS[op][1]]
        if op == "ttt_linear":
            s["mini_batch_size"] = 64
        assert e.flops(s) == 2 * 2 * 2 * (base + extra)
        assert e.bytes(s, "float16") > 2 * 2 * 128 * 2 * (2 * 64 + 2 * 64)
        res = e.run(e.make_inputs(e.shapes["quick"][0] | {"K": 32, "V": 32}, "float32", "cpu"),
                    e.shapes["quick"][0])
        assert res[0].shape[-1] == 32 and res[1] is not None


# ------------------------------------------------------------------------------------------------
# CUDA: code generation for sm_90a (no GPU needed), numerics on a GPU
# ------------------------------------------------------------------------------------------------

# the single-kernel chunk form serves ttt_linear on CUDA; the split chunk kernels of the other ops are
# compiled in tests/test_cuda_codegen.py
CODEGEN = [
    ("ttt_linear", "chunk", "float16", 128, 16),
    ("simple_gla", "parallel", "bfloat16", 128, 0), ("gla", "parallel", "float16", 64, 0),
    ("gated_delta_rule", "recurrent", "bfloat16", 128, 0), ("ttt_linear", "recurrent", "float16", 64, 16),
    ("gla", "recurrent", "float16", 128, 0),
]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("op,form,dtype,kd,chunk", CODEGEN, ids=[_ids(c) for c in CODEGEN])
def test_cuda_schedule_compiles_for_sm90a(op, form, dtype, kd, chunk):
    from tvm_attn import _tvm
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_cuda

    for varlen in (False, True) if form == "chunk" else (False,):
        spec = LinearSpec(op, form, kd, 128, dtype, varlen, chunk)
        src = _tvm.cuda_source(build_cuda(spec, "sm_90a"))
        if form != "recurrent":  # every matrix product on mma.sync fed by ldmatrix, fp32 accumulation
            ab = "bf16" if dtype == "bfloat16" else "f16"
            assert f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32" in src
            assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in src
        cubin = _tvm.compile_cuda_source(src, "sm_90a", "cubin")
        assert cubin[:4] == b"\x7fELF"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_delta_state_synchronous_variants():
    # the delta rule's 64-wide state variants (in the tuning space) compile for sm_90a, the synchronous one
    # (stages 0) without cp.async; V' formed in registers (split.state's vt), the tile fits three CTAs
    # per SM synchronous, two with one chunk fetched ahead, one with two
    from tvm_attn import _tvm
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import SMEM_LIMIT, build_config, cuda_func
    from tvm_attn.schedules.linear import apply_cuda_chunk_part, split_variant_space

    spec = LinearSpec("gated_delta_rule", "chunk", 128, 128, "bfloat16", False, 64, "state", "v64")
    smem = {}
    for v in split_variant_space("state", "delta", "scalar", "v64"):
        if v.block_v != 64:
            continue
        sch = _tvm.Schedule(cuda_func(spec, v))
        apply_cuda_chunk_part(sch, "state", v, "bfloat16")
        ex, smem[v.stages] = _tvm.compile_with_shared_memory(sch.mod, _tvm.cuda_target("sm_90a"), build_config())
        src = _tvm.cuda_source(ex)
        assert ("cp_async" in src) == (v.stages > 0) and src.count("mma.sync") > 0
        if v.stages == 0:
            assert _tvm.compile_cuda_source(src, "sm_90a", "cubin")[:4] == b"\x7fELF"
    per_sm = {st: SMEM_LIMIT["sm_90a"] // (b + 1024) for st, b in smem.items()}  # 1 KiB reserved per CTA
    assert (per_sm[0], per_sm[1], per_sm[2]) == (3, 2, 1), smem


def test_cuda_delta_state_warps_split_value_tiles():
    # the delta rule's state kernel: where the warps can own its 16-row value tiles (v32: 2 warps, v64: 4)
    # it forms V' transposed in registers (split.state's vt: Y = odt(Sᵀ) the A operand of Y Wᵀ) and each
    # warp decays only its rows of Vdᵀ; the default's single value tile (2 warps) is split by key tiles:
    # V' decayed once by the warps that hold it (their row tiles), rounded into shared memory, and all
    # of Vdᵀ loaded from there by every warp (ldmatrix.trans). No fp32 V' in shared memory either way
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import cuda_schedule
    from tvm_attn.schedules.linear import _has

    def warp_split(sch, block):
        return any(sch.get(lp).thread_binding is not None and sch.get(lp).thread_binding.thread_tag == "threadIdx.y"
                   for lp in sch.get_loops(block))

    def fp32_shared(sch):  # the fp32 buffers in shared memory besides the gates (an fp32 alloc names no dtype)
        allocs = [ln.strip() for ln in sch.mod.script().splitlines() if "alloc_buffer" in ln and "shared" in ln]
        return [a for a in allocs if "float16" not in a and not a.startswith("b_s ")]

    for op in ("gated_delta_rule", "delta_rule"):
        for tiles, vt in (("", False), ("v32", True), ("v64", True)):
            sch = cuda_schedule(LinearSpec(op, "chunk", 128, 128, "bfloat16", False, 64, "state", tiles))
            assert _has(sch, "V_decay") == vt and _has(sch, "Y_store") == vt, (op, tiles)
            if vt:
                assert warp_split(sch, "V_decay")
            else:
                assert warp_split(sch, "Vn_decay") and not warp_split(sch, "Vt_load_o"), (op, tiles)
            assert fp32_shared(sch) == [], (op, tiles, fp32_shared(sch))
    # tuning samples the warp count as a perfect tiling of the value tiles (every mutation a valid split):
    # v32's 2 value tiles allow 1 or 2 warps, not the 4 that the chunk's row tiles would
    spec = LinearSpec("gated_delta_rule", "chunk", 128, 128, "bfloat16", False, 64, "state", "v32")
    for _ in range(4):
        sch = cuda_schedule(spec, tunable=True)
        tiles = [[int(d) for d in dec] for inst, dec in sch.trace.decisions.items()
                 if inst.kind.name == "SamplePerfectTile"]
        assert len(tiles) == 1 and math.prod(tiles[0]) == 2, tiles
        assert warp_split(sch, "V_decay")


def test_cuda_gate_cumsum_divides_once():
    # the gate cumsum kernel computes its coordinates before its row loops: lowering substitutes a
    # tile's coordinates into every use, and a division by the symbolic sizes per row made the kernel
    # issue-bound (41 us on an H200 at every anchor shape, 4 us without)
    import re

    from tvm_attn import _tvm
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_config, cuda_schedule

    for op, varlen in (("gated_delta_rule", False), ("gla", False), ("simple_gla", True)):
        spec = LinearSpec(op, "chunk", 128, 128, "bfloat16", varlen, 64, "cumsum", "")
        src = _tvm.cuda_source(_tvm.compile_module(cuda_schedule(spec).mod, _tvm.cuda_target("sm_90a"),
                                                   build_config()))
        body = src[src.index("__global__", src.index("__global__") + 1):]
        loops = body[body.index("for ("):]
        assert loops.count("for (") == 2, loops[:400]
        assert not re.search(r"[/%] \(?\(?\(?[A-Za-z(]", loops), loops[:2000]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_chunk_design_space_samples_compile():
    # the MetaSchedule space: sampled warp counts and unroll depths give valid sm_90a kernels
    from tvm_attn import _tvm
    from tvm_attn.ops.linear.build import LinearSpec, make_func
    from tvm_attn.ops.linear.compute import Scopes
    from tvm_attn.ops.linear.cuda import build_config
    from tvm_attn.schedules.linear import DEFAULT_CHUNK_VARIANT, cuda_space

    spec = LinearSpec("simple_gla", "chunk", 128, 128, "float16", False, 64)
    space = cuda_space("chunk", DEFAULT_CHUNK_VARIANT, "float16", chunk=64, key_dim=128)
    warps = set()
    for seed in (1, 2, 3):
        # a fresh PrimFunc per schedule: TVM 0.27 schedules can write through to a shared one
        func = make_func(spec, block_v=DEFAULT_CHUNK_VARIANT.block_v, op_dtype=None,
                         scopes=Scopes(tile="shared.dyn", acc="shared.dyn", solve="local"))
        sch = _tvm.Schedule(func, seed=seed)
        space(sch)
        kinds = [inst.kind.name for inst in sch.trace.insts]
        assert "SamplePerfectTile" in kinds and "SampleCategorical" in kinds
        warps.add(int(sch.trace.decisions[next(i for i in sch.trace.insts if i.kind.name == "SamplePerfectTile")][0]))
    ex = _tvm.compile_module(sch.mod, _tvm.cuda_target("sm_90a"), build_config())
    assert "mma.sync.aligned.m16n8k16" in _tvm.cuda_source(ex)
    assert warps <= {1, 2, 4}


def test_cuda_chunk_over_shared_memory_is_refused():
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_cuda

    # gla's split output kernel holds a chunk of q, k, b and the keys scaled for every sub-chunk
    with pytest.raises(ValueError, match=r"chunk_size=128\) needs \d+ bytes of shared memory"):
        build_cuda(LinearSpec("gla", "chunk", 128, 128, "float16", False, 128, "output"), "sm_90a")


@requires_cuda
@pytest.mark.parametrize("op,form", OP_FORMS, ids=[_ids(c) for c in OP_FORMS])
def test_cuda_against_reference(op: str, form: str):
    for dtype in ("float16", "bfloat16"):
        for s in (shape(200, kd=128, vd=128), shape(seqlens=[37, 130, 1, 0, 64], kd=64, vd=128)):
            for t in (LENGTHS if "T" in s else (None,)):
                s2 = dict(s, T=t) if t else s
                if t == 1000 and "T" in s:
                    s2["B"] = 1
                inp = make_inputs(op, s2, dtype, "cuda", seed=16)
                check(f"cuda {op} {form} {dtype} {s2}", op, form, inp, chunk=chunk_of(op), dtype=dtype)



@requires_cuda
@pytest.mark.parametrize("op,tiles", [("simple_gla", "many"), ("linear_attention", "many"), ("simple_gla", "mid"),
                                      ("gla", "many"), ("gated_delta_rule", "v32"), ("gated_delta_rule", "v64"),
                                      ("delta_rule", "v64")])
def test_cuda_state_tiling_against_reference(op: str, tiles: str, monkeypatch):
    # the state kernel's wider tilings, forced (each is picked once its CTAs fill the card)
    from tvm_attn.ops.linear import build, torch_ops

    monkeypatch.setattr(torch_ops, "state_tiling", lambda *a: tiles)
    for dtype in ("float16", "bfloat16"):
        for s in (shape(200, kd=128, vd=128), shape(seqlens=[37, 130, 1, 0, 64], kd=64, vd=128)):
            inp = make_inputs(op, s, dtype, "cuda", seed=19)
            check(f"cuda {op} {tiles} {dtype} {s}", op, "chunk", inp, chunk=64, dtype=dtype)
            assert any(sp.op == op and sp.part == "state" and sp.tiles == tiles and sp.dtype == dtype
                       for sp, _ in build._by_spec), "the forced tiling's kernel was not the one called"


@requires_cuda
@pytest.mark.parametrize("op", ["simple_gla", "linear_attention", "gated_delta_rule", "delta_rule"])
def test_cuda_fused_against_reference(op: str, monkeypatch):
    # the state and output passes as one kernel: at a shape with enough (sequence, head) pairs to be
    # picked by itself, then forced at small dense and uneven varlen shapes (a one-token and an empty
    # sequence), from an initial state and without one
    from tvm_attn.ops.linear import build, torch_ops

    def called(dtype):
        return any(sp.op == op and sp.part == "fused" and sp.dtype == dtype for sp, _ in build._by_spec)

    inp = make_inputs(op, shape(300, b=8, h=16, kd=128, vd=128), "bfloat16", "cuda", seed=23)
    assert torch_ops.fused_pass(op, 8, 16, 128, 128, 64, torch.device("cuda"))
    check(f"cuda {op} fused (8, 300, 16)", op, "chunk", inp, chunk=64, dtype="bfloat16")
    assert called("bfloat16"), "the fused kernel was not the one called"
    monkeypatch.setattr(torch_ops, "fused_pass", lambda *a: True)
    for dtype in ("float16", "bfloat16"):
        for s in (shape(200, kd=128, vd=128), shape(1, kd=128, vd=64),
                  shape(seqlens=[37, 130, 1, 0, 64], kd=64, vd=128)):
            for initial in (True, False):
                inp = make_inputs(op, s, dtype, "cuda", seed=19)
                check(f"cuda {op} fused {dtype} {s} initial={initial}", op, "chunk", inp, chunk=64, dtype=dtype,
                      initial=initial)
        assert called(dtype)


@requires_cuda
@pytest.mark.parametrize("stages", [0, 2])
def test_cuda_delta_state_pipeline_depths_against_reference(stages: int, monkeypatch):
    # the delta rule's 64-wide state tile at the pipeline depths the tuning space holds besides the
    # default's 1 (0: synchronous loads), forced as the v64 tiling's default
    from tvm_attn.ops.linear import build, torch_ops
    from tvm_attn.schedules import linear as sched

    forced = dataclasses.replace(sched.DEFAULT_SPLIT_VARIANTS["state_v64"], stages=stages)
    monkeypatch.setitem(sched.DEFAULT_SPLIT_VARIANTS, "state_v64", forced)
    monkeypatch.setattr(build, "_by_spec", {})
    monkeypatch.setattr(torch_ops, "state_tiling", lambda *a: "v64")
    for dtype in ("float16", "bfloat16"):
        for s in (shape(200, kd=128, vd=128), shape(seqlens=[37, 130, 1, 0, 64], kd=64, vd=128)):
            inp = make_inputs("gated_delta_rule", s, dtype, "cuda", seed=23)
            check(f"cuda gated_delta_rule v64 s{stages} {dtype} {s}", "gated_delta_rule", "chunk", inp, chunk=64,
                  dtype=dtype)
    assert any(k.schedule == f"default_{forced.key}" for (sp, _), k in build._by_spec.items()
               if sp.part == "state" and sp.tiles == "v64"), "the forced variant's kernel was not the one called"


@requires_cuda
@pytest.mark.parametrize("fused", [False, True], ids=["state", "fused"])
@pytest.mark.parametrize("op", ["simple_gla", "linear_attention"])
def test_cuda_segmented_against_reference(op: str, fused: bool):
    # the recurrence split along the sequence, then the state pass or the fused state and output kernel
    # on the segments, forced (picked for few, long sequences)
    from tvm_attn.ops.linear.torch_ops import run_chunk_split

    for dtype in ("float16", "bfloat16"):
        for s, seg in ((shape(1000, b=1, kd=128, vd=128), 4), (shape(seqlens=[37, 700, 1, 0, 130, 64], kd=64, vd=128), 2)):
            inp = make_inputs(op, s, dtype, "cuda", seed=29)
            h0 = state_for(inp, "chunk")
            cu = inp.get("cu_seqlens")
            n = cu.shape[0] - 1 if cu is not None else inp["q"].shape[0]
            out = torch.full(inp["v"].shape, float("nan"), dtype=inp["q"].dtype, device="cuda")
            final = torch.full((n, s["H"], s["K"], s["V"]), float("nan"), device="cuda")
            run_chunk_split(op, inp["q"], inp["k"], inp["v"], *extras(op, inp), h0, cu, s["K"] ** -0.5, 64,
                            out=out, final_state=final, segment_chunks=seg, fused=fused)
            ref, ref_ht = reference(op, inp, initial_state=h0)
            ref_lowp, ref_ht_lowp = reference(op, inp, initial_state=h0, upcast=False)
            name = f"cuda {op} segmented{' fused' if fused else ''} {dtype} {s}"
            assert_fa_rule(f"{name} o", out, ref, ref_lowp)
            assert_fa_rule(f"{name} final state", final, ref_ht, ref_ht_lowp)


def _smem_overlaps(pre, post) -> list[str]:
    """Dynamic shared-memory buffers that share bytes while both live (touched in overlapping top-level
    statements of the kernel), from the IR before and after MergeSharedMemoryAllocations: offsets from
    every access's index shift, liveness at the planner's own granularity."""
    from tvm_attn._tvm import tirx, tvm, tvm_ffi

    Analyzer = tvm.sym.analyzer.Analyzer

    def main(mod):
        return max((f for f in mod.functions.values() if isinstance(f, tirx.PrimFunc)), key=lambda f: len(f.script()))

    def walk(node, fn):
        tvm_ffi.structural_walk(node, [(object, fn)], order="pre")

    def accesses(node):
        out = []

        def visit(n):
            if type(n).__name__ in ("BufferLoad", "TensorLoad", "BufferStore"):
                out.append((hash(n.buffer if hasattr(n, "buffer") else n.source), n.indices[0]))
            elif isinstance(n, tvm.ir.expr.Call) and n.op.name.endswith("tvm_access_ptr"):
                out.append((hash(n.args[1]), n.args[2]))
        walk(node, visit)
        return out

    def top_level(stmt):
        if isinstance(stmt, tirx.AttrStmt):
            yield from top_level(stmt.body)
        elif isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                yield from top_level(s)
        else:
            yield stmt

    pre_f, post_f = main(pre), main(post)
    allocs = {}
    walk(pre_f.body, lambda n: allocs.__setitem__(hash(n.buffer), n.buffer)
         if isinstance(n, tirx.AllocBuffer) and n.buffer.scope() == "shared.dyn" else None)
    a, b = accesses(pre_f.body), accesses(post_f.body)
    assert len(a) == len(b)
    ana, offset = Analyzer(), {}
    for (va, ia), (_, ib) in zip(a, b):
        if va in allocs:
            d = ana.simplify(ib - ia)  # vectorised accesses: a ramp (or broadcast) of one offset
            offset.setdefault(va, int(d.base if hasattr(d, "base") else getattr(d, "value", d)))
    live = {}
    for i, s in enumerate(top_level(pre_f.body)):
        if isinstance(s, tirx.AllocBuffer):
            continue
        used = set()
        walk(s, lambda n: used.add(hash(n)) if isinstance(n, tvm.ir.expr.Var) else None)
        for v in used & set(allocs):
            lo, hi = live.get(v, (i, i))
            live[v] = (min(lo, i), max(hi, i))

    def span(v):
        e = tvm.DataType(allocs[v].dtype).bits // 8
        return offset[v] * e, (offset[v] + int(allocs[v].shape[0])) * e

    bad, vs = [], sorted(live, key=live.get)
    for x, p in enumerate(vs):
        for q in vs[x + 1:]:
            (p0, p1), (q0, q1) = span(p), span(q)
            if live[p][1] >= live[q][0] and live[q][1] >= live[p][0] and p0 < q1 and q0 < p1:
                bad.append(f"{allocs[p].name} [{p0}, {p1}) overlaps {allocs[q].name} [{q0}, {q1}) while both live")
    return bad


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("op", SPLIT_OPS)
def test_cuda_split_shared_memory_plan(op: str):
    # TVM 0.27's shared-memory planner re-lays out reused buffers when it coalesces freed blocks; it once
    # put the prep kernel's K Kᵀ on β K and its Tm on β V (delta rules wrong on a GPU, right on the CPU).
    # No GPU needed: every split kernel's merged plan must keep live buffers apart.
    from tvm_attn import _tvm
    from tvm_attn._tvm import tvm
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_config, cuda_schedule

    cap = {}

    @tvm.instrument.pass_instrument
    class _Capture:
        def run_before_pass(self, mod, info):
            if info.name.endswith("MergeSharedMemoryAllocations"):
                cap["pre"] = mod

        def run_after_pass(self, mod, info):
            if info.name.endswith("MergeSharedMemoryAllocations"):
                cap["post"] = mod

    _tvm.import_tensor_intrin()
    _tvm._patch_lower_warp_memory()
    gate, rule = OP_KINDS[op]
    parts = ("prep", "state", "output") if rule == "delta" else ("state", "output")
    parts += ("fused",) if gate != "vector" else ()
    for part in parts:
        for kd, vd, c, dtype in ((128, 128, 64, "float16"), (64, 128, 32, "bfloat16"), (32, 64, 64, "float16"),
                                 (64, 64, 16, "float16")):
            spec = LinearSpec(op, "chunk", kd, vd, dtype, False, c, part)
            with tvm.transform.PassContext(opt_level=3, config=build_config(), instruments=[_Capture()]):
                tvm.compile(cuda_schedule(spec).mod, target=_tvm.cuda_target("sm_90a"))
            assert not _smem_overlaps(cap["pre"], cap["post"]), (spec.key, _smem_overlaps(cap["pre"], cap["post"]))
