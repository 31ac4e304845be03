"""flash_attention / flash_attention_varlen against the fp32 reference (FlashAttention's error rule),
kernels called with NaN-poisoned outputs. CPU always; CUDA where a GPU is present."""
from __future__ import annotations

import math

import pytest
import torch

import tvm_attn
from tvm_attn import kernels
from tvm_attn.kernels import KernelSpec
from tvm_attn.ops.flash.reference import attention_ref, attention_varlen_ref

from conftest import HAS_CUDA, LOW_DTYPES, assert_fa_rule, assert_lse

# (B, Tq, Tk, Hq, Hkv, D): awkward lengths, one-token rows, Tq != Tk both ways, MHA / GQA / MQA
SHAPES = [
    (1, 1, 1, 2, 2, 64),
    (2, 63, 63, 4, 2, 64),
    (1, 239, 1, 4, 1, 64),
    (2, 113, 203, 4, 4, 64),
    (1, 203, 113, 4, 2, 128),
    (1, 1023, 1024, 2, 1, 64),
    (3, 1, 300, 8, 2, 128),
]
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def _dtypes(device: str) -> list[str]:
    return ["float16", "bfloat16"] if device == "cuda" else ["float32", "float16", "bfloat16"]


def run_dense_poisoned(q, k, v, causal, scale):
    """Call the compiled kernel directly on outputs filled with NaN (an unwritten element shows)."""
    spec = KernelSpec("flash_fwd", q.shape[-1], q.shape[2] // k.shape[2], str(q.dtype)[6:], causal)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"), device=q.device)
    kernels.get(spec, q.device)(q, k, v, out, lse, scale)
    return out, lse


def _case_ids(shape) -> str:
    return "B{}_Tq{}_Tk{}_H{}x{}_D{}".format(*shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=_case_ids)
def test_dense_fp32_reference(device, causal, shape):
    b, tq, tk, hq, hkv, d = shape
    for dtype in _dtypes(device):
        if device == "cpu" and dtype != "float32" and tq * tk > 100_000:
            continue  # low-precision torch reference on the CPU is slow at this size; fp32 covers it
        torch.manual_seed(hash((shape, causal, dtype)) % 2**31)
        dt = LOW_DTYPES[dtype]
        q = torch.randn(b, tq, hq, d, device=device, dtype=dt)
        k = torch.randn(b, tk, hkv, d, device=device, dtype=dt)
        v = torch.randn(b, tk, hkv, d, device=device, dtype=dt)
        scale = 1.0 / math.sqrt(d)
        out, lse = run_dense_poisoned(q, k, v, causal, scale)
        ref, ref_lse = attention_ref(q, k, v, causal=causal)
        ref_lowp, _ = attention_ref(q, k, v, causal=causal, upcast=False)
        assert out.dtype == dt and lse.dtype == torch.float32
        assert_fa_rule(f"{dtype} {shape}", out, ref, ref_lowp)
        assert_lse(lse, ref_lse, 1e-4 if dtype == "float32" else 2e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_varlen_uneven(device, causal, hq, hkv):
    # sequences of very different lengths, one of them a single token, one with more queries than keys
    lens_q, lens_k = [37, 200, 1, 129, 64], [61, 150, 9, 129, 1]
    d = 64
    for dtype in _dtypes(device):
        torch.manual_seed(7)
        dt = LOW_DTYPES[dtype]
        cu = lambda ls: torch.tensor([0, *torch.tensor(ls).cumsum(0).tolist()], dtype=torch.int32, device=device)
        cq, ck = cu(lens_q), cu(lens_k)
        q = torch.randn(sum(lens_q), hq, d, device=device, dtype=dt)
        k = torch.randn(sum(lens_k), hkv, d, device=device, dtype=dt)
        v = torch.randn(sum(lens_k), hkv, d, device=device, dtype=dt)
        spec = KernelSpec("flash_fwd_varlen", d, hq // hkv, dtype, causal)
        out = torch.full_like(q, float("nan"))
        lse = torch.full((hq, q.shape[0]), float("nan"), device=device)
        kernels.get(spec, q.device)(q[None], k[None], v[None], cq, ck, out[None], lse[None], max(lens_q),
                                    1.0 / math.sqrt(d))
        ref, ref_lse = attention_varlen_ref(q, k, v, cq, ck, causal=causal)
        ref_lowp, _ = attention_varlen_ref(q, k, v, cq, ck, causal=causal, upcast=False)
        assert_fa_rule(f"varlen {dtype}", out, ref, ref_lowp)
        assert_lse(lse, ref_lse, 1e-4 if dtype == "float32" else 2e-2)
        # the public function gives the same result
        api_out, api_lse = tvm_attn.flash_attention_varlen(q, k, v, cq, ck, max(lens_q), max(lens_k),
                                                           causal=causal, return_lse=True)
        torch.testing.assert_close(api_out, out, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_api_scale_lse_and_fully_masked_rows(device):
    # Tq > Tk causal: the first Tq - Tk rows see no key -> zeros and lse = -inf, never NaN
    dt = torch.float32 if device == "cpu" else torch.float16
    q = torch.randn(2, 50, 4, 64, device=device, dtype=dt)
    k = torch.randn(2, 20, 2, 64, device=device, dtype=dt)
    v = torch.randn(2, 20, 2, 64, device=device, dtype=dt)
    out, lse = tvm_attn.flash_attention(q, k, v, causal=True, softmax_scale=0.37, return_lse=True)
    ref, ref_lse = attention_ref(q, k, v, causal=True, softmax_scale=0.37)
    assert torch.equal(out[:, :30].float(), torch.zeros_like(out[:, :30].float()))
    assert torch.isneginf(lse[:, :, :30]).all()
    assert_lse(lse, ref_lse, 1e-4 if dt == torch.float32 else 2e-2)
    torch.testing.assert_close(out.float(), ref, atol=2e-3 if dt != torch.float32 else 1e-5, rtol=0)
    assert tvm_attn.flash_attention(q, k, v, causal=True, softmax_scale=0.37).shape == q.shape


def test_one_module_serves_every_length():
    # symbolic sequence lengths: many lengths, one compiled kernel per specialisation
    from tvm_attn.kernels import _loaded

    before = set(_loaded)
    for tq, tk in [(5, 7), (64, 64), (130, 17), (1, 513)]:
        q = torch.randn(1, tq, 2, 64)
        kv = torch.randn(1, tk, 2, 64)
        tvm_attn.flash_attention(q, kv, kv, causal=True)
    assert len(set(_loaded) - before) <= 1
