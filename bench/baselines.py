"""Baselines timed beside tvm-attn in the same run, each only where it is installed.

A baseline is ``make(entry, shape, inputs) -> callable | str``: a zero-argument callable running the
baseline on the same inputs, or a string saying why it is missing or does not apply. A ``Checked``
callable (fla) is also checked against the op's fp32 reference before it is timed.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Checked:
    """A baseline the driver checks against the op's fp32 reference once before timing it: ``fn`` runs it,
    ``first_output`` maps its result onto the op's first output (same layout), ``note`` says what differs
    in how it runs (never in what it computes)."""

    fn: Callable[[], object]
    first_output: Callable[[object], torch.Tensor]
    note: str = ""

    def __call__(self) -> object:
        return self.fn()


# linear op -> (fla module, chunk function, extra keyword arguments) or why fla has no counterpart.
# Ours and fla's: layout [B, T, H, K], gates in log space, beta post-sigmoid, scale default K^-1/2,
# state [N, H, K, V]; q and k are used as given (no l2norm inside the kernel: ours does none).
FLA_OPS: dict[str, tuple[str, str, dict] | str] = {
    "linear_attention": ("fla.ops.linear_attn", "chunk_linear_attn", {"normalize": False}),  # ours: unnormalised
    "simple_gla": ("fla.ops.simple_gla", "chunk_simple_gla", {}),
    "gla": ("fla.ops.gla", "chunk_gla", {}),
    "delta_rule": ("fla.ops.delta_rule", "chunk_delta_rule", {"use_qk_l2norm_in_kernel": False}),
    "gated_delta_rule": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule", {"use_qk_l2norm_in_kernel": False}),
    "ttt_linear": "no fla counterpart: fla's chunk_ttt_linear trains a LayerNorm + residual inner model with a "
                  "bias state (ln weight/bias, target v - k); ours is the plain linear inner model",
}
# the per-token tensors each fla function takes after q, k, v, in its positional order
_FLA_GATES = {"linear_attention": (), "simple_gla": ("g",), "gla": ("g",), "delta_rule": ("beta",),
              "gated_delta_rule": ("g", "beta")}
# chunk sizes each fla function accepts (None: it takes no chunk_size; fla picks 64)
_FLA_CHUNKS = {"linear_attention": None, "simple_gla": (16, 32, 64, 128), "gla": None,
               "delta_rule": (16, 32, 64), "gated_delta_rule": (16, 32, 64)}


def fla_call(entry, shape, inputs) -> Checked | str:
    """The fla chunk call doing the work of our timed call at ``shape``: the same tensors, scale, initial
    state and final-state output (importing fla; no device check)."""
    mapped = FLA_OPS.get(entry.name)
    if mapped is None or isinstance(mapped, str):
        return mapped or f"no fla mapping for {entry.name}"
    params = entry.params(shape)
    if params["form"] != "chunk":
        return f"fla is mapped for the chunk form only (this point is form={params['form']})"
    module, name, extra = mapped
    # fla's Triton autotune keys leave out the batch and the length, and by default keep the winners on
    # disk: without this every shape would run the configs tuned for the first one fla saw
    os.environ.setdefault("FLA_CACHE_RESULTS", "0")
    fn = getattr(importlib.import_module(module), name)
    _fla_autotune_for(entry.name, shape)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    scale = params.get("scale")  # ours: K^-1/2 unless the point sets one
    kwargs = dict(extra, scale=1.0 / math.sqrt(q.shape[-1]) if scale is None else scale,
                  output_final_state=params["output_final_state"])
    if inputs.get("initial_state") is not None:
        kwargs["initial_state"] = inputs["initial_state"].float()  # fla's chunk_gla asserts an fp32 state
    note = []
    if inputs.get("cu_seqlens") is not None:
        kwargs["cu_seqlens"] = inputs["cu_seqlens"].long()  # fla takes int64 offsets
        if name != "chunk_linear_attn":
            kwargs["cu_seqlens_cpu"] = kwargs["cu_seqlens"].cpu()  # no host sync inside the timed call
    chunk = params.get("chunk_size", 64)
    if _FLA_CHUNKS[entry.name] is not None and chunk in _FLA_CHUNKS[entry.name]:
        kwargs["chunk_size"] = chunk
    elif chunk != 64:
        note.append(f"fla runs chunk size 64 (ours {chunk}; the result does not depend on it)")
    args = (q, k, v, *(inputs[n] for n in _FLA_GATES[entry.name]))
    return Checked(lambda: fn(*args, **kwargs), lambda out: out[0], "; ".join(note))


_fla_tuned_for: list = [None]


def _fla_autotune_for(op: str, shape: dict) -> None:
    """Forget the configs fla's autotuners picked (every Triton ``Autotuner`` reachable from a loaded
    ``fla`` module) when the (op, shape) changes, so each shape is timed with the configs tuned for it:
    what a process running only that shape gets."""
    point = (op, tuple(sorted(shape.items())))
    if _fla_tuned_for[0] == point:
        return
    _fla_tuned_for[0] = point
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:  # no triton: no autotuner to reset
        return

    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "fla" or mod_name.startswith("fla.")):
            continue
        for obj in list(vars(mod).values()):
            for _ in range(4):  # heuristics and jit wrappers hold the autotuner in ``fn``
                if isinstance(obj, Autotuner):
                    obj.cache.clear()
                    break
                obj = getattr(obj, "fn", None)
                if obj is None:
                    break


def _fla(entry, shape, inputs):
    if entry.family != "linear":
        return "not a linear-attention op"
    if isinstance(FLA_OPS.get(entry.name), str):
        return FLA_OPS[entry.name]
    if inputs["q"].device.type != "cuda":
        return f"fla needs triton and a CUDA GPU (inputs are on {inputs['q'].device.type})"
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention is not installed"
    if importlib.util.find_spec("triton") is None:
        return "fla needs triton, which is not installed"
    try:
        call = fla_call(entry, shape, inputs)
        if isinstance(call, str):
            return call
        call()
    except Exception as e:  # noqa: BLE001  (fla refuses these inputs: dtype, head dim, ...)
        first = str(e).splitlines()[0][:120] if str(e) else ""
        return f"unavailable: {type(e).__name__}: {first}"
    return call


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
