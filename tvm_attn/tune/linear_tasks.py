"""Tuning tasks of the linear-attention split chunk kernels (``ops/linear/split.py``, ``split_gla.py``).

A ``LinearSpec`` with a ``part`` is one kernel (prep, state or output) of one op's chunk form. Its tasks
are the compute variants of ``schedules.linear.split_variant_space`` (value / key tile, pipeline depth:
they shape buffers, so they live in the compute), each a MetaSchedule task whose schedule samples the
warp count. A state kernel with a tiling name (``kinds.SPLIT_TILINGS``) is tuned at the shape class that
tiling is for. CUDA only: the CPU runs these kernels with one fixed schedule.
"""
from __future__ import annotations

import math

from tvm_attn import _tvm
from tvm_attn.ops.linear.build import LinearSpec
from tvm_attn.tune.tasks import Task


def _require_cuda(device: str) -> None:
    if device != "cuda":
        raise ValueError("the linear-attention kernels are tuned on CUDA only (their CPU schedule has no knobs)")


def representative_shape(spec: LinearSpec, device: str) -> dict[str, int]:
    """The lengths tuning measures at (recorded in the provenance): the shape class of the kernel's
    tiling (``kinds.TILING_SHAPES``: the anchors' long sequence for the default, their batch of shorter
    ones for the tilings of many (sequence, head) pairs; H 16), the state kernels given an initial state
    (N0: its sequences; a call without one passes none, ``split.state``)."""
    from tvm_attn.ops.linear.kinds import FUSED_SHAPE, TILING_SHAPES

    _require_cuda(device)
    b, t = FUSED_SHAPE if spec.part == "fused" else TILING_SHAPES[spec.tiles]
    return {"B": b, "T": t, "H": 16, "NTt": b * math.ceil(t / spec.chunk), "N0": b}


def scale_of(spec: LinearSpec) -> float:
    return 1.0 / math.sqrt(spec.key_dim)


def variant_space(spec: LinearSpec) -> list:
    from tvm_attn.schedules.linear import split_variant_space

    st = spec.static
    return split_variant_space(spec.part, st.rule, st.gate, spec.tiles)


def variant_from_key(spec: LinearSpec, device: str, key: str):
    for v in variant_space(spec):
        if v.key == key:
            return v
    raise KeyError(f"variant {key!r} is not in the design space of {spec.key} anymore")


def default_key(spec: LinearSpec, device: str) -> str:
    from tvm_attn.schedules.linear import default_split_variant

    st = spec.static
    return default_split_variant(spec.part, st.rule, st.gate, spec.tiles).key


def func(spec: LinearSpec, variant):
    """The unscheduled CUDA function of ``variant`` (as ``ops.linear.cuda.cuda_schedule`` builds it)."""
    from tvm_attn.ops.linear.cuda import cuda_func

    return cuda_func(spec, variant)  # (global symbol "main", noalias: set by the compute)


def specialize(f, sizes: dict[str, int], scale: float):
    """Bind the symbolic sizes (by name) and the output's scale: MetaSchedule measures concrete workloads."""
    tirx = _tvm.tirx
    binds = {}
    for param in f.params:
        if param.name == "scale":
            binds[param] = tirx.const(scale, "float32")
        elif hasattr(param, "shape"):
            shape = [sizes[d.name] if isinstance(d, tirx.Var) else int(d) for d in param.shape]
            binds[param] = tirx.decl_buffer(shape, param.dtype, param.name)
    return f.specialize(binds)


def task_func(spec: LinearSpec, device: str, variant, prov: dict):
    """The specialised function whose structural hash a record of ``variant`` carries."""
    return specialize(func(spec, variant), prov["representative_shape"], prov["scale"])


def space(spec: LinearSpec, variant):
    from tvm_attn.schedules.linear import apply_cuda_chunk_part

    def apply(sch) -> None:
        apply_cuda_chunk_part(sch, spec.part, variant, spec.dtype, tunable=True)

    return apply


def tasks(spec: LinearSpec, device: str, shape: dict[str, int]) -> list[Task]:
    _require_cuda(device)
    if spec.varlen or not spec.part:
        raise ValueError(f"{spec.key}: only the dense split chunk kernels are tuned")
    return [Task(v, f"{spec.key}-{v.key}", specialize(func(spec, v), shape, scale_of(spec)), space(spec, v))
            for v in variant_space(spec)]


def replay(spec: LinearSpec, device: str, variant, trace_json):
    """Apply a tuned trace to the symbolic function of ``variant`` (one module for every length)."""
    _tvm.import_tensor_intrin()
    sch = _tvm.Schedule(func(spec, variant))
    _tvm.Trace.apply_json_to_schedule(trace_json, sch)
    return sch


def build(spec: LinearSpec, device: str, arch: str | None, variant, sch):
    from tvm_attn.ops.linear.cuda import compile_checked

    return compile_checked(spec, sch, arch or "sm_90a")


def flops(spec: LinearSpec, shape: dict[str, int]) -> int:
    """Matrix-product flops of the kernel at ``shape`` (2 per multiply-add)."""
    n, t, h, c = shape["B"], shape["T"], shape["H"], spec.chunk
    k, v = spec.key_dim, spec.value_dim
    state = c * k * v + (c * k * v if spec.static.rule == "delta" else 0)  # Kᵀ V' (and W S)
    output = c * k * v + c * c * k + c * c * v  # Q h, Q Kᵀ, P V
    per_chunk = {"prep": c * c * k + c * c * (k + v),  # K Kᵀ, W and U (the solve is not counted)
                 "state": state, "output": output, "fused": state + output}[spec.part]
    return 2 * n * h * math.ceil(t / c) * per_chunk


def part_args(spec: LinearSpec, shape: dict[str, int], device):
    """Real arguments of the kernel at ``shape`` (the call order's scratch: prep's W and U random)."""
    import torch

    from tvm_attn.ops.linear import make_inputs
    from tvm_attn.ops.linear.torch_ops import _chunk_local_cumsum

    st = spec.static
    b, t, h, c = shape["B"], shape["T"], shape["H"], spec.chunk
    inp = make_inputs(spec.op, {"B": b, "T": t, "H": h, "K": spec.key_dim, "V": spec.value_dim}, spec.dtype,
                      device, seed=0)
    q, k, v = inp["q"], inp["k"], inp["v"]
    gc = ([_chunk_local_cumsum(spec.op, inp["g"], None, None, c, spec.key_dim, spec.value_dim)]
          if st.gate != "none" else [])
    nt = shape["NTt"]
    hs_shape = (nt, h, spec.key_dim, spec.value_dim) if st.gate == "vector" else (nt, h, spec.value_dim, spec.key_dim)
    hs = torch.randn(hs_shape, dtype=q.dtype, device=device) * 0.1
    h0 = torch.zeros(b, h, spec.key_dim, spec.value_dim, device=device)
    if spec.part == "prep":
        return (k, v, *gc, inp["beta"].float().contiguous(), torch.empty_like(k), torch.empty_like(v))
    w, u = (torch.randn_like(k) * 0.1, torch.randn_like(v) * 0.1) if st.rule == "delta" else (None, None)
    if spec.part == "state":
        if st.rule == "delta":
            return (k, w, u, *gc, h0, hs, torch.empty_like(v), torch.empty_like(h0))
        return (k, v, *gc, h0, hs, torch.empty_like(h0))
    if spec.part == "fused":
        return (q, k, *((w, u) if st.rule == "delta" else (v,)), *gc, h0, torch.empty_like(v), torch.empty_like(h0),
                scale_of(spec))
    return (q, k, v, *gc, hs, torch.empty_like(v), scale_of(spec))


def ms_build_cuda(mod, target, _params):
    """MetaSchedule builder for the split kernels (their shared-memory plan and cp.async; module level:
    builder workers import it by name)."""
    from tvm_attn.ops.linear.cuda import build_config

    _tvm.import_tensor_intrin()
    _tvm._patch_lower_warp_memory()
    with _tvm.tvm.transform.PassContext(opt_level=3, config=build_config()):
        return _tvm.tvm.build(mod, target=target)


def ms_builder(device: str):
    _require_cuda(device)
    return ms_build_cuda


def plans(spec: LinearSpec, tgt, best) -> tuple:
    """The default decision's plan and the plan replaying ``best`` (``tune.run.Best``)."""
    from tvm_attn.kernels import Plan
    from tvm_attn.ops.linear.cuda import default_plan
    from tvm_attn.tune import dispatch

    return default_plan(spec, tgt.arch or "sm_90a"), Plan("tuned", lambda: dispatch.build_tuned(spec, tgt, best))


def measure(spec: LinearSpec, device: str, arch: str | None, shape: dict, plans) -> list[float]:
    """Seconds of each plan's kernel on the same real arguments, through the compiled module's call."""
    import torch

    from tvm_attn.tune.tasks import time_plans

    return time_plans(plans, part_args(spec, shape, torch.device(device)), device)


def tune_hint(spec: LinearSpec) -> str:
    return f"tvm-attn tune --op {spec.op} --head-dim {spec.key_dim} --dtype {spec.dtype} --chunk {spec.chunk}"


def spec_from_key(key: str) -> LinearSpec:
    """Invert ``LinearSpec.key`` for a split chunk kernel (``linear_<op>_chunk_<part>[_<tiles>]_k.._v.._
    <dtype>_c<chunk>_<dense|varlen>``)."""
    import re

    from tvm_attn.ops.linear.kinds import OP_KINDS

    m = re.fullmatch(r"linear_(\w+?)_chunk_(prep|state|output|fused)(?:_(\w+?))?_k(\d+)_v(\d+)_(\w+)_c(\d+)_(dense|varlen)",
                     key)
    if m is None or m.group(1) not in OP_KINDS:
        raise ValueError(f"{key!r} is not the key of a linear split chunk kernel")
    op, part, tiles, kd, vd, dt, c, var = m.groups()
    return LinearSpec(op, "chunk", int(kd), int(vd), dt, var == "varlen", int(c), part, tiles or "")
