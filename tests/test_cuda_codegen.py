"""Every CUDA schedule's default decision generates tensor-core CUDA and compiles with nvcc for sm_90a.

Runs without a GPU: TVM emits CUDA C++ and nvcc (CUDA 13) compiles it; nothing is launched.
"""
from __future__ import annotations

import re
import shutil

import pytest

from tvm_attn import _tvm, kernels
from tvm_attn.kernels import KernelSpec

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")

CASES = [
    KernelSpec(op, d, g, dt, causal)
    for op, d, g, dt, causal in [
        ("flash_fwd", 64, 1, "float16", False),
        ("flash_fwd", 64, 4, "bfloat16", True),
        ("flash_fwd", 128, 1, "bfloat16", False),
        ("flash_fwd", 128, 2, "float16", True),
        ("flash_fwd", 256, 1, "bfloat16", True),
        ("flash_fwd_varlen", 128, 4, "bfloat16", True),
        ("flash_fwd_varlen", 64, 1, "float16", False),
    ]
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.key)
def test_default_schedule_compiles_for_sm90a(spec: KernelSpec):
    variant = kernels.default_variant(spec)
    src = _tvm.cuda_source(kernels.build_cuda(spec, variant, "sm_90a"))
    ab = "bf16" if spec.dtype == "bfloat16" else "f16"
    # both matrix products on mma.sync with fp32 accumulation, fed by ldmatrix (V through its .trans form)
    assert f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32" in src
    assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in src
    assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in src
    # the row statistics are reduced across the quad with shuffles, not through shared memory
    assert "__shfl_sync" in src
    if variant.stages:
        assert "cp.async" in src
    ptx = _tvm.compile_cuda_source(src, "sm_90a", "ptx").decode()
    assert ".target sm_90a" in ptx
    assert len(re.findall(r"\bmma\.sync\.aligned\.m16n8k16", ptx)) >= 8
    cubin = _tvm.compile_cuda_source(src, "sm_90a", "cubin")
    assert cubin[:4] == b"\x7fELF"


# ------------------------------------------------------------------------------------------------
# linear attention: the split chunk form (prep, state and output kernels)
# ------------------------------------------------------------------------------------------------

LINEAR_SPLIT = [
    ("simple_gla", "bfloat16", 128, False), ("simple_gla", "float16", 128, True),
    ("linear_attention", "float16", 64, False), ("gated_delta_rule", "bfloat16", 128, False),
    ("gated_delta_rule", "float16", 128, True), ("delta_rule", "bfloat16", 64, True),
    ("gla", "bfloat16", 128, False), ("gla", "float16", 64, True),
]


@pytest.mark.parametrize("op,dtype,kd,varlen", LINEAR_SPLIT, ids=lambda c: str(c))
def test_linear_split_chunk_kernels_compile_for_sm90a(op: str, dtype: str, kd: int, varlen: bool):
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_cuda
    from tvm_attn.ops.linear.kinds import OP_KINDS

    ab = "bf16" if dtype == "bfloat16" else "f16"
    gate, rule = OP_KINDS[op]
    parts = ("prep", "state", "output") if rule == "delta" else ("state", "output")
    parts += ("fused",) if gate != "vector" else ()
    for part in parts:
        src = _tvm.cuda_source(build_cuda(LinearSpec(op, "chunk", kd, 128, dtype, varlen, 64, part), "sm_90a"))
        # every matrix product on mma.sync fed by ldmatrix, fp32 accumulation
        assert f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32" in src, part
        assert "ldmatrix.sync.aligned.m8n8.x4." in src, part
        cubin = _tvm.compile_cuda_source(src, "sm_90a", "cubin")
        assert cubin[:4] == b"\x7fELF"


def test_linear_split_state_many_tiling_compiles():
    # the add rule's large-tile state kernels (many (sequence, head) pairs; mid: 64 x 64): 4 warps each own 16 value
    # rows of the state, their Vᵀ loaded by ldmatrix.trans and decayed in registers; the delta rule's
    # wider value tiles (32 values on 2 warps, 64 on 4); gla's whole state on 8 warps (4 at K = 64: its 16-row
    # key tiles)
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_cuda

    for op, kd, tiles, threads in (("simple_gla", 128, "many", 128), ("linear_attention", 64, "many", 128),
                                   ("simple_gla", 128, "mid", 128), ("linear_attention", 128, "mid", 128),
                                   ("gated_delta_rule", 128, "v64", 128), ("delta_rule", 128, "v32", 64),
                                   ("gla", 128, "many", 256), ("gla", 64, "many", 128)):
        src = _tvm.cuda_source(build_cuda(LinearSpec(op, "chunk", kd, 128, "bfloat16", False, 64, "state", tiles),
                                          "sm_90a"))
        assert f"__launch_bounds__({threads})" in src and "ldmatrix.sync.aligned.m8n8.x4.trans" in src, (op, tiles)
        assert _tvm.compile_cuda_source(src, "sm_90a", "cubin")[:4] == b"\x7fELF"


def _split_kernel_shared_memory(op: str, dtype: str, part: str) -> int:
    """The dynamic shared memory per CTA of one split kernel's default schedule (K = V = 128, chunk 64),
    compiled for sm_90a (its CUDA checked to compile with nvcc too)."""
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_config, cuda_schedule

    sch = cuda_schedule(LinearSpec(op, "chunk", 128, 128, dtype, False, 64, part))
    ex, smem = _tvm.compile_with_shared_memory(sch.mod, _tvm.cuda_target("sm_90a"), build_config())
    assert _tvm.compile_cuda_source(_tvm.cuda_source(ex), "sm_90a", "cubin")[:4] == b"\x7fELF", (op, part)
    return smem


def test_linear_prep_fits_three_ctas_per_sm():
    # the delta rules' prep kernel holds K in shared memory once (K Kᵀ's A operand goes from it to
    # registers by ldmatrix, W leaves through it): at K = V = 128, chunk 64 its plan fits three CTAs per
    # SM of an H100/H200 (228 KiB, 1 KiB per CTA reserved), which took it from 179 to 171 µs at (8, 2048)
    for op, dtype in (("gated_delta_rule", "bfloat16"), ("delta_rule", "float16")):
        smem = _split_kernel_shared_memory(op, dtype, "prep")
        assert 0 < smem <= (228 // 3 - 1) * 1024, (op, smem)


def test_linear_gla_output_fits_two_ctas_per_sm():
    # gla's output kernel works in two phases whose shared tiles reuse each other's memory (the scaled
    # keys and V after Q, K, the gates and h[c] are done): at K = V = 128, chunk 64, value tile 128 its
    # plan fits two CTAs per SM of an H100/H200 (187 KiB with every tile live at once), which took it
    # from 458 to 363 µs at (8, 2048)
    for dtype in ("bfloat16", "float16"):
        smem = _split_kernel_shared_memory("gla", dtype, "output")
        assert 0 < smem <= (228 // 2 - 1) * 1024, (dtype, smem)


def test_linear_gate_cumsum_kernel_compiles():
    # the gates' chunk-local cumsum: one thread per (chunk, head[, key channel]), 4 warps per CTA
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_cuda

    for op, varlen in (("simple_gla", False), ("gla", True)):
        src = _tvm.cuda_source(build_cuda(LinearSpec(op, "chunk", 128, 128, "bfloat16", varlen, 64, "cumsum"),
                                          "sm_90a"))
        assert "__launch_bounds__(128)" in src, op
        assert _tvm.compile_cuda_source(src, "sm_90a", "cubin")[:4] == b"\x7fELF"


def test_linear_segmented_state_kernels_compile():
    # the state pass split along the sequence: its segment-local pass (tensor cores, cp.async, no h), the
    # state pass in the same whole-state tiling and the carry between segments (one thread per state
    # element), gated and not
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_cuda

    for op, kd, dtype in (("simple_gla", 128, "bfloat16"), ("linear_attention", 64, "float16")):
        for part, tiles in (("state_local", "whole"), ("state", "whole"), ("carry", "")):
            spec = LinearSpec(op, "chunk", kd, 128, dtype, True, 64, part, tiles)
            src = _tvm.cuda_source(build_cuda(spec, "sm_90a"))
            if part != "carry":  # the whole state per CTA, eight warps
                assert "__launch_bounds__(256)" in src and "mma.sync.aligned.m16n8k16" in src and "cp.async" in src
            else:
                assert "__launch_bounds__(256)" in src and ("exp2f" in src) == (op == "simple_gla")
            assert _tvm.compile_cuda_source(src, "sm_90a", "cubin")[:4] == b"\x7fELF", (op, part)


def test_linear_split_state_design_space_samples_compile():
    # the MetaSchedule space of the state kernel: sampled warp counts give valid sm_90a kernels (warps
    # own the delta rule's four 16-row tiles of W S and the update's eight 16-column key tiles)
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_config, cuda_schedule
    from tvm_attn.schedules.linear import LinearVariant

    spec = LinearSpec("gated_delta_rule", "chunk", 128, 128, "bfloat16", False, 64, "state")
    warps = set()
    for _ in range(4):
        sch = cuda_schedule(spec, LinearVariant(block_v=32, warps=4, stages=2), tunable=True)
        tiles = [inst for inst in sch.trace.insts if inst.kind.name == "SamplePerfectTile"]
        assert tiles
        warps.add(int(sch.trace.decisions[tiles[0]][0]))
        src = _tvm.cuda_source(_tvm.compile_module(sch.mod, _tvm.cuda_target("sm_90a"), build_config()))
        assert "mma.sync.aligned.m16n8k16" in src and "cp.async" in src
        assert _tvm.compile_cuda_source(src, "sm_90a", "cubin")[:4] == b"\x7fELF"
    assert warps <= {1, 2, 4}


def test_linear_split_gla_warp_counts_compile():
    # gla's output kernel: every warp count the space can sample (warps own 1, 2 or 4 of the chunk's
    # sub-chunks: the batched key operand and the diagonal blocks per row tile), its state kernel with
    # one and four warps, and both at chunk 32
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_cuda
    from tvm_attn.schedules.linear import LinearVariant

    for part, variants in (("output", [LinearVariant(block_v=128, warps=w) for w in (1, 2, 4)]),
                           ("state", [LinearVariant(block_v=32, warps=w, block_k=64, stages=2) for w in (1, 4)])):
        for variant in variants:
            spec = LinearSpec("gla", "chunk", 128, 128, "bfloat16", False, 64, part)
            src = _tvm.cuda_source(build_cuda(spec, "sm_90a", variant))
            assert f"__launch_bounds__({32 * variant.warps})" in src and "mma.sync.aligned.m16n8k16" in src
            assert _tvm.compile_cuda_source(src, "sm_90a", "cubin")[:4] == b"\x7fELF"
    for part in ("state", "output"):  # two sub-chunks per chunk, K = V = 64, varlen, default variants
        src = _tvm.cuda_source(build_cuda(LinearSpec("gla", "chunk", 64, 64, "float16", True, 32, part), "sm_90a"))
        assert _tvm.compile_cuda_source(src, "sm_90a", "cubin")[:4] == b"\x7fELF"


def test_linear_split_state_one_warp_compiles():
    # one warp at C = 64 computes two rows of the chunk's decays per thread; that pass must not need a
    # barrier inside the pipeline's epilogue (TVM cannot place one there)
    from tvm_attn.ops.linear.build import LinearSpec
    from tvm_attn.ops.linear.cuda import build_cuda
    from tvm_attn.schedules.linear import LinearVariant

    for op in ("simple_gla", "gated_delta_rule"):
        spec = LinearSpec(op, "chunk", 128, 128, "bfloat16", False, 64, "state")
        src = _tvm.cuda_source(build_cuda(spec, "sm_90a", LinearVariant(block_v=16, warps=1, block_k=128, stages=2)))
        assert "__launch_bounds__(32)" in src
        assert _tvm.compile_cuda_source(src, "sm_90a", "cubin")[:4] == b"\x7fELF"
