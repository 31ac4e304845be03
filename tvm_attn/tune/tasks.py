"""Tuning tasks: one MetaSchedule task per compute variant of a specialisation, at a stated
representative shape, and the replay of a tuned trace onto the symbolic (any-length) function.

This module is the flash family's; ``linear_tasks`` is the linear-attention split kernels' with the same
functions. ``family(spec)`` picks one; the tuner, the dispatch and the CLI go through it."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from tvm_attn import _tvm
from tvm_attn.kernels import CPU_TILES, KernelSpec, flash_static
from tvm_attn.ops.flash.compute import FlashTiles, flash_forward
from tvm_attn.schedules import flash as sched


def representative_shape(spec: KernelSpec, device: str) -> dict[str, int]:
    """The lengths tuning measures at (recorded in the provenance). H·D = 2048 as in the anchors."""
    if device == "cpu":
        hq = 4
        return {"B": 1, "Tq": 256, "Tk": 256, "Hq": hq, "Hkv": max(1, hq // spec.group)}
    hq = max(spec.group, 2048 // spec.head_dim)
    return {"B": 4, "Tq": 4096, "Tk": 4096, "Hq": hq, "Hkv": hq // spec.group}


def specialize(func, sizes: dict[str, int], sm_scale: float):
    """Bind the symbolic sizes (by name) and the scale: MetaSchedule measures concrete workloads."""
    tirx = _tvm.tirx
    binds = {}
    for param in func.params:  # 0.27: buffer parameters are Vars that carry their buffer's shape
        if param.name == "sm_scale":
            binds[param] = tirx.const(sm_scale, "float32")
        elif param.name == "max_seqlen_q":
            binds[param] = tirx.const(sizes["Tq"], "int32")
        else:
            shape = [sizes[d.name] if isinstance(d, tirx.Var) else int(d) for d in param.shape]
            binds[param] = tirx.decl_buffer(shape, param.dtype, param.name)
    return func.specialize(binds)


@dataclass(frozen=True)
class Task:
    """One variant of one specialisation: the concrete workload and its design space."""

    variant: object  # FlashVariant (CUDA) or FlashTiles (CPU)
    name: str
    func: object  # specialised PrimFunc
    space: object  # (Schedule) -> None

    def workload_hash(self) -> str:
        return workload_hash(self.func)


def workload_hash(func) -> str:
    from tvm_attn._tvm import ms

    return ms.utils.shash2hex(_tvm.tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))


CPU_VARIANTS = (FlashTiles(*CPU_TILES), FlashTiles(32, 64))


def cuda_func(spec: KernelSpec, variant):
    return flash_forward(flash_static(spec), variant.tiles, smem="shared.dyn", warp="warp")


def cpu_func(spec: KernelSpec, tiles: FlashTiles):
    return flash_forward(flash_static(spec), tiles)


def variant_key(variant) -> str:
    if isinstance(variant, FlashTiles):
        return f"m{variant.block_m}n{variant.block_n}"
    return variant.key


def tasks(spec: KernelSpec, device: str, shape: dict[str, int]) -> list[Task]:
    scale = 1.0 / math.sqrt(spec.head_dim)
    if device == "cpu":
        return [Task(t, f"{spec.key}-{variant_key(t)}", specialize(cpu_func(spec, t), shape, scale), sched.cpu_space)
                for t in CPU_VARIANTS]
    return [Task(v, f"{spec.key}-{v.key}", specialize(cuda_func(spec, v), shape, scale), sched.cuda_space(v, spec.dtype))
            for v in sched.VARIANT_SPACE[spec.head_dim]]


def variant_from_key(spec: KernelSpec, device: str, key: str):
    pool = CPU_VARIANTS if device == "cpu" else sched.VARIANT_SPACE[spec.head_dim]
    for v in pool:
        if variant_key(v) == key:
            return v
    raise KeyError(f"variant {key!r} is not in the design space of {spec.key} anymore")


def replay(spec: KernelSpec, device: str, variant, trace_json):
    """Apply a tuned trace (MetaSchedule JSON) to the symbolic function of ``variant``: the decisions
    were measured at the representative shape, and one module then serves every length."""
    _tvm.import_tensor_intrin()  # the trace names tensor intrinsics, the bf16 ones included
    func = cpu_func(spec, variant) if device == "cpu" else cuda_func(spec, variant)
    sch = _tvm.Schedule(func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True))
    _tvm.Trace.apply_json_to_schedule(trace_json, sch)
    return sch


# ------------------------------------------------------------------ the rest of the family interface
def family(spec):
    """The tasks module of ``spec``'s kind of kernel: this one (flash) or ``linear_tasks``."""
    if isinstance(spec, KernelSpec):
        return sys.modules[__name__]
    from tvm_attn.tune import linear_tasks

    return linear_tasks


def family_of_key(key: str):
    """The tasks module of a record's specialisation key."""
    from tvm_attn.tune import linear_tasks

    return linear_tasks if key.startswith("linear_") else sys.modules[__name__]


def default_key(spec: KernelSpec, device: str) -> str:
    from tvm_attn import kernels

    return variant_key(CPU_VARIANTS[0] if device == "cpu" else kernels.default_variant(spec))


def scale_of(spec: KernelSpec) -> float:
    return 1.0 / math.sqrt(spec.head_dim)


def task_func(spec: KernelSpec, device: str, variant, prov: dict):
    """The specialised function whose structural hash a record of ``variant`` carries."""
    f = cpu_func(spec, variant) if device == "cpu" else cuda_func(spec, variant)
    return specialize(f, prov["representative_shape"], prov.get("scale", prov.get("sm_scale")))


def build(spec: KernelSpec, device: str, arch: str | None, variant, sch):
    """Compile a replayed schedule of ``variant``."""
    if device == "cpu":
        postproc = _tvm.ms.postproc.RewriteParallelVectorizeUnroll()
        ctx = _tvm.ms.TuneContext(mod=sch.mod, target=_tvm.cpu_target(),
                                  space_generator=_tvm.ms.space_generator.ScheduleFn(
                                      lambda s: None, sch_rules=[], postprocs=[postproc], mutator_probs={}))
        for p in ctx.space_generator.postprocs:
            p.apply(sch)
        return _tvm.compile_module(sch.mod, _tvm.cpu_target())
    return _tvm.compile_module(sch.mod, _tvm.cuda_target(arch), _tvm.build_config(async_copy=variant.stages > 0))


def flops(spec: KernelSpec, shape: dict) -> int:
    from tvm_attn.ops.flash import visible_pairs

    return 4 * shape["B"] * shape["Hq"] * spec.head_dim * visible_pairs(shape["Tq"], shape["Tk"], spec.causal)


def ms_builder(device: str):
    """The MetaSchedule builder function (module level: builder workers import it by name)."""
    from tvm_attn.tune import run

    return run.ms_build_cpu if device == "cpu" else run.ms_build_cuda


def plans(spec: KernelSpec, tgt, best) -> tuple:
    """The default decision's plan and the plan replaying ``best`` (``tune.run.Best``)."""
    from tvm_attn import kernels

    return kernels.default_plan(spec, tgt), kernels.tuned_plan(spec, tgt, best)


def time_plans(plans, args, device: str) -> list[float]:
    """Seconds of each plan's kernel called on ``args`` (the same tensors for every plan)."""
    from tvm_attn.bench.driver import time_calls

    times = []
    for plan in plans:
        fn = plan.build()["main"]
        times.append(time_calls([lambda fn=fn: fn(*args)], device))
    return times


def measure(spec: KernelSpec, device: str, arch: str | None, shape: dict, plans) -> list[float]:
    """Seconds of each plan's kernel on the same inputs, through the compiled module's call."""
    import torch

    dev = torch.device(device)
    dt = getattr(torch, spec.dtype)
    q = torch.randn(shape["B"], shape["Tq"], shape["Hq"], spec.head_dim, device=dev, dtype=dt)
    k = torch.randn(shape["B"], shape["Tk"], shape["Hkv"], spec.head_dim, device=dev, dtype=dt)
    v = torch.randn_like(k)
    out = torch.empty_like(q)
    lse = torch.empty(shape["B"], shape["Hq"], shape["Tq"], device=dev)
    return time_plans(plans, (q, k, v, out, lse, scale_of(spec)), device)


def tune_hint(spec: KernelSpec) -> str:
    return (f"tvm-attn tune --op {spec.op} --head-dim {spec.head_dim} --group {spec.group} "
            f"--dtype {spec.dtype} {'--causal yes' if spec.causal else '--causal no'}")


def spec_from_key(key: str) -> KernelSpec:
    op, rest = key.split("_d", 1)
    d, g, dt, mask = rest.split("_", 3)
    return KernelSpec(op, int(d), int(g[1:]), dt, mask == "causal")
