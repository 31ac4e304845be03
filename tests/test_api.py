"""Public API contract: bad arguments raise TypeError/ValueError naming the argument (never a TVM
traceback); the torch ops pass opcheck, compile under torch.compile and stay one node in torch.export."""
from __future__ import annotations

import pytest
import torch

import tvm_attn
from tvm_attn.ops.flash.reference import attention_ref


def qkv(b=1, tq=16, tk=16, hq=4, hkv=2, d=64, dtype=torch.float32):
    return (torch.randn(b, tq, hq, d, dtype=dtype), torch.randn(b, tk, hkv, d, dtype=dtype),
            torch.randn(b, tk, hkv, d, dtype=dtype))


@pytest.mark.parametrize("mutate,exc,name", [
    (lambda q, k, v: (q.to(torch.float64), k, v), TypeError, "q has dtype float64"),
    (lambda q, k, v: (q, k.half(), v), TypeError, "k has dtype"),
    (lambda q, k, v: (q.numpy(), k, v), TypeError, "q must be a torch.Tensor"),
    (lambda q, k, v: (q[0], k, v), ValueError, "q must have shape"),
    (lambda q, k, v: (q, k, v[:, :8]), ValueError, "k and v must have the same shape"),
    (lambda q, k, v: (q[:, :, :3].contiguous(), k, v), ValueError, "head ratio"),
    (lambda q, k, v: (q[..., :48].contiguous(), k[..., :48].contiguous(), v[..., :48].contiguous()),
     ValueError, "head dim 48"),
    (lambda q, k, v: (q.transpose(1, 2).contiguous().transpose(1, 2), k, v), ValueError, "q must be contiguous"),
    (lambda q, k, v: (q[:, :0], k, v), ValueError, "empty sequence"),
    (lambda q, k, v: (q, k[:, :0], v[:, :0]), ValueError, "empty sequence"),
    (lambda q, k, v: (q, k[:1].expand(2, -1, -1, -1).contiguous(), v[:1].expand(2, -1, -1, -1).contiguous()),
     ValueError, "batch of k"),
    (lambda q, k, v: (q.to("meta"), k, v), ValueError, "q is on meta"),
])
def test_dense_argument_errors(mutate, exc, name):
    q, k, v = mutate(*qkv())
    with pytest.raises(exc, match=name):
        tvm_attn.flash_attention(q, k, v)


def test_misaligned_view_is_refused_by_name():
    # the CUDA kernels load 16-byte vectors; a contiguous view starting mid-vector would fault the device
    # (checked for CUDA tensors only: the check itself on a CPU view, as no GPU is needed)
    from tvm_attn.api import check_aligned

    base = torch.randn(1 + 16 * 4 * 64, dtype=torch.float16)
    view = base[1:].view(1, 16, 4, 64)
    assert view.is_contiguous() and view.data_ptr() % 16
    with pytest.raises(ValueError, match="q does not start at a 16-byte aligned address"):
        check_aligned("q", view)
    check_aligned("q", view.clone())  # a fresh allocation passes


def test_option_errors():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="causal must be a bool"):
        tvm_attn.flash_attention(q, k, v, causal=1)
    with pytest.raises(TypeError, match="softmax_scale"):
        tvm_attn.flash_attention(q, k, v, softmax_scale=float("nan"))
    with pytest.raises(ValueError, match="softmax_scale must be positive"):
        tvm_attn.flash_attention(q, k, v, softmax_scale=0.0)


def test_varlen_argument_errors():
    q, k, v = (torch.randn(10, 4, 64), torch.randn(12, 2, 64), torch.randn(12, 2, 64))
    cq, ck = torch.tensor([0, 4, 10], dtype=torch.int32), torch.tensor([0, 6, 12], dtype=torch.int32)
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32"):
        tvm_attn.flash_attention_varlen(q, k, v, cq.long(), ck, 6, 6)
    with pytest.raises(ValueError, match="cu_seqlens_k must have shape"):
        tvm_attn.flash_attention_varlen(q, k, v, cq, ck[:1], 6, 6)
    with pytest.raises(ValueError, match="same number of sequences"):
        tvm_attn.flash_attention_varlen(q, k, v, cq, torch.tensor([0, 12], dtype=torch.int32), 6, 6)
    with pytest.raises(ValueError, match="max_seqlen_q"):
        tvm_attn.flash_attention_varlen(q, k, v, cq, ck, 0, 6)
    with pytest.raises(ValueError, match="q must have shape"):
        tvm_attn.flash_attention_varlen(q[None], k, v, cq, ck, 6, 6)


def test_nan_check_is_opt_in(monkeypatch):
    q, k, v = qkv()
    q[0, 0, 0, 0] = float("nan")
    monkeypatch.setenv("TVM_ATTN_CHECK_FINITE", "1")
    with pytest.raises(ValueError, match="q contains NaN"):
        tvm_attn.flash_attention(q, k, v)


def test_opcheck():
    q, k, v = qkv(tq=20, tk=33)
    torch.library.opcheck(torch.ops.tvm_attn.flash_fwd, (q, k, v, True, 0.125))
    cq, ck = torch.tensor([0, 7, 20], dtype=torch.int32), torch.tensor([0, 30, 33], dtype=torch.int32)
    torch.library.opcheck(torch.ops.tvm_attn.flash_fwd_varlen,
                          (q[0], k[0], v[0], cq, ck, 13, False, 0.125))


def test_torch_compile_and_export():
    q, k, v = qkv(tq=24, tk=24)

    def f(q, k, v):
        return tvm_attn.flash_attention(q * 2.0, k, v, causal=True) + 1.0

    compiled = torch.compile(f, fullgraph=True)
    ref, _ = attention_ref(q * 2.0, k, v, causal=True)
    torch.testing.assert_close(compiled(q, k, v), ref + 1.0, atol=1e-5, rtol=0)

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return tvm_attn.flash_attention(q, k, v, causal=True)

    ep = torch.export.export(M(), (q, k, v))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.tvm_attn.flash_fwd.default in targets
