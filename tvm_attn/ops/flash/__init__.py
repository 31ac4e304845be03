"""Flash-attention forward: dense [B, T, H, D] and varlen (packed + cu_seqlens). Registry entries."""
from __future__ import annotations

import math

import torch

from ...registry import OpEntry, TensorSpec, register
from .reference import attention_ref, attention_varlen_ref

HEAD_DIMS = (64, 128, 256)  # CUDA tensor-core schedules
CPU_HEAD_DIMS = (32, 64, 96, 128, 256)


def visible_pairs(tq: int, tk: int, causal: bool) -> int:
    """Number of (query, key) pairs the mask lets through (causal: row i sees keys j <= i + Tk - Tq)."""
    if not causal:
        return tq * tk
    return sum(min(tk, max(0, i + tk - tq + 1)) for i in range(tq))


def _flops(s) -> int:
    pairs = sum(visible_pairs(a, b, s["causal"]) for a, b in _lengths(s))
    return 4 * pairs * s["Hq"] * s["D"]


def _bytes(s, dtype: str) -> int:
    e = torch.finfo(getattr(torch, dtype)).bits // 8
    tq = sum(a for a, _ in _lengths(s))
    tk = sum(b for _, b in _lengths(s))
    return e * s["D"] * (2 * tq * s["Hq"] + 2 * tk * s["Hkv"]) + 4 * tq * s["Hq"]


def _lengths(s) -> list[tuple[int, int]]:
    if "seqlens_q" in s:
        return list(zip(s["seqlens_q"], s["seqlens_k"]))
    return [(s["Tq"], s["Tk"])] * s["B"]


def _dense_inputs(s, dtype, device, seed: int = 0) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    return {"q": mk(s["B"], s["Tq"], s["Hq"], s["D"]), "k": mk(s["B"], s["Tk"], s["Hkv"], s["D"]),
            "v": mk(s["B"], s["Tk"], s["Hkv"], s["D"])}


def _varlen_inputs(s, dtype, device, seed: int = 0) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    cu = lambda ls: torch.tensor([0, *torch.tensor(ls).cumsum(0).tolist()], dtype=torch.int32, device=device)
    tq, tk = sum(s["seqlens_q"]), sum(s["seqlens_k"])
    return {"q": mk(tq, s["Hq"], s["D"]), "k": mk(tk, s["Hkv"], s["D"]), "v": mk(tk, s["Hkv"], s["D"]),
            "cu_seqlens_q": cu(s["seqlens_q"]), "cu_seqlens_k": cu(s["seqlens_k"]),
            "max_seqlen_q": max(s["seqlens_q"]), "max_seqlen_k": max(s["seqlens_k"])}


def _params(s) -> dict:
    return {"causal": s["causal"], "softmax_scale": s.get("softmax_scale")}


def _anchor_shapes() -> tuple[dict, ...]:
    # ../shared/reference/anchors.md: B·N = 16384 tokens, H·D = 2048
    return tuple({"B": 16384 // n, "Tq": n, "Tk": n, "Hq": 2048 // d, "Hkv": 2048 // d, "D": d, "causal": c}
                 for d in (64, 128) for n in (1024, 4096, 16384) for c in (False, True))


_DENSE_TENSORS = dict(
    inputs=(TensorSpec("q", ("B", "Tq", "Hq", "D")), TensorSpec("k", ("B", "Tk", "Hkv", "D")),
            TensorSpec("v", ("B", "Tk", "Hkv", "D"))),
    outputs=(TensorSpec("out", ("B", "Tq", "Hq", "D")), TensorSpec("lse", ("B", "Hq", "Tq"), "float32")),
)

FLASH_FWD = register(OpEntry(
    name="flash_fwd",
    family="flash",
    summary="fused attention forward, MHA/GQA/MQA, causal (bottom-right), [B, T, H, D]",
    fixed_axes={"D": HEAD_DIMS, "group": (1, 2, 4, 8, 16, 32), "causal": (False, True)},
    symbolic_axes=("B", "Tq", "Tk", "Hq", "Hkv"),
    dtypes={"cuda": ("float16", "bfloat16"), "cpu": ("float32", "float16", "bfloat16")},
    reference=attention_ref,
    make_inputs=_dense_inputs,
    params=_params,
    flops=_flops,
    bytes=_bytes,
    api="tvm_attn.api:flash_attention",
    shapes={
        "quick": ({"B": 1, "Tq": 256, "Tk": 256, "Hq": 4, "Hkv": 4, "D": 64, "causal": False},
                  {"B": 1, "Tq": 256, "Tk": 256, "Hq": 4, "Hkv": 2, "D": 64, "causal": True}),
        "anchors": _anchor_shapes(),
    },
    **_DENSE_TENSORS,
))

FLASH_FWD_VARLEN = register(OpEntry(
    name="flash_fwd_varlen",
    family="flash",
    summary="fused attention forward on packed sequences [total_T, H, D] + cu_seqlens",
    fixed_axes={"D": HEAD_DIMS, "group": (1, 2, 4, 8, 16, 32), "causal": (False, True)},
    symbolic_axes=("N", "total_q", "total_k", "Hq", "Hkv"),
    inputs=(TensorSpec("q", ("total_q", "Hq", "D")), TensorSpec("k", ("total_k", "Hkv", "D")),
            TensorSpec("v", ("total_k", "Hkv", "D")), TensorSpec("cu_seqlens_q", ("N+1",), "int32"),
            TensorSpec("cu_seqlens_k", ("N+1",), "int32")),
    outputs=(TensorSpec("out", ("total_q", "Hq", "D")), TensorSpec("lse", ("Hq", "total_q"), "float32")),
    dtypes={"cuda": ("float16", "bfloat16"), "cpu": ("float32", "float16", "bfloat16")},
    reference=attention_varlen_ref,
    make_inputs=_varlen_inputs,
    params=_params,
    flops=_flops,
    bytes=_bytes,
    api="tvm_attn.api:flash_attention_varlen",
    shapes={
        "quick": ({"seqlens_q": [37, 200, 1], "seqlens_k": [61, 200, 9], "Hq": 4, "Hkv": 1, "D": 64,
                   "causal": True},),
        "anchors": tuple({"seqlens_q": ls, "seqlens_k": ls, "Hq": 16, "Hkv": 16, "D": 128, "causal": c}
                         for ls in ([512, 1024, 2048, 4096, 8192, 256, 128, 128],) for c in (False, True)),
    },
))

__all__ = ["FLASH_FWD", "FLASH_FWD_VARLEN", "HEAD_DIMS", "CPU_HEAD_DIMS", "visible_pairs"]
