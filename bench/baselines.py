"""Baselines timed beside tvm-attn in the same run, each only where it is installed.

A baseline is ``make(entry, shape, inputs) -> callable | str``: a zero-argument callable running the
baseline on the same inputs, or a string saying why it is missing or does not apply.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch


def _bhsd(inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # tvm-attn is [B, T, H, D]; SDPA and FlexAttention take [B, H, T, D] (a view, no copy needed: SDPA
    # accepts strided inputs, and both time the same transposition-free kernels)
    return tuple(inputs[n].transpose(1, 2) for n in ("q", "k", "v"))


def _sdpa(backend_name: str):
    def make(entry, shape, inputs):
        if entry.name != "flash_fwd":
            return "no SDPA equivalent"
        if shape["causal"] and shape["Tq"] != shape["Tk"]:
            return "SDPA's causal mask is top-left aligned; ours is bottom-right"
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)
        q, k, v = _bhsd(inputs)
        gqa = q.shape[1] != k.shape[1]
        causal = shape["causal"]
        fn = torch.nn.functional.scaled_dot_product_attention

        def run():
            with sdpa_kernel(backend):
                return fn(q, k, v, is_causal=causal, enable_gqa=gqa)

        try:
            run()
        except RuntimeError as e:  # the backend refuses these inputs (dtype, head dim, device)
            return f"unavailable: {str(e).splitlines()[0][:120]}"
        return run

    return make


def _flex(entry, shape, inputs):
    if entry.name != "flash_fwd":
        return "no FlexAttention equivalent"
    if not torch.cuda.is_available() or inputs["q"].device.type != "cuda":
        return "FlexAttention needs CUDA here"
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = _bhsd(inputs)
    tq, tk = q.shape[2], k.shape[2]
    # compiled once per shape; a fresh dynamo cache so it never falls back to eager after recompiles
    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, dynamic=False)
    block_mask = None
    if shape["causal"]:
        off = tk - tq
        block_mask = create_block_mask(lambda b, h, qi, kj: kj <= qi + off, None, None, tq, tk,
                                       device=q.device)
    gqa = q.shape[1] != k.shape[1]
    return lambda: compiled(q, k, v, block_mask=block_mask, enable_gqa=gqa)


def _fla(entry, shape, inputs):
    if entry.family != "linear":
        return "not a linear-attention op"
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention is not installed"
    return "no fla mapping for this op yet"


BASELINES: dict[str, Callable] = {
    "sdpa-flash": _sdpa("FLASH_ATTENTION"),
    "sdpa-cudnn": _sdpa("CUDNN_ATTENTION"),
    "sdpa-efficient": _sdpa("EFFICIENT_ATTENTION"),
    "sdpa-math": _sdpa("MATH"),
    "flex": _flex,
    "fla": _fla,
}
DEFAULT_CUDA = ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "flex", "fla")
DEFAULT_CPU = ("sdpa-math",)
