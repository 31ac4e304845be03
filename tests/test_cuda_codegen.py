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
