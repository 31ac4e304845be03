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

import torch

from .build import LinearSpec, get
from .kinds import OP_KINDS


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


def run_kernel(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
               beta: torch.Tensor | None, initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
               form: str, scale: float, chunk_size: int, *, out: torch.Tensor | None = None,
               final_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the compiled kernel of ``op`` / ``form`` (destination-passing: ``out`` [B, T, H, V] and
    ``final_state`` [N, H, K, V] fp32 are allocated here unless given, e.g. NaN-filled by a test)."""
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
