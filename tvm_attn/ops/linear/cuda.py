"""CUDA builds of the linear-attention kernels: the chunk and parallel forms on tensor cores
(``schedules/linear.py``), the recurrent form on CUDA cores. A spec with a ``part`` is one kernel of the
split chunk form (``split.py``).

Shared memory: every chunk buffer is planned by TVM's dynamic shared-memory merge pass
(``tirx.merge_static_smem`` keeps StorageRewrite from folding an fp32 buffer onto an fp16 operand,
which 0.27's access-pointer lowering rejects). The pass keeps a buffer live across the whole chunk loop,
so the footprint is the sum of the chunk's buffers; a build that needs more than the card's opt-in limit
raises ``ValueError`` naming the chunk size.
"""
from __future__ import annotations

from ...kernels import Plan
from .build import LinearSpec, make_func

# opt-in dynamic shared memory per block (sm_90: 227 KiB)
SMEM_LIMIT = {"sm_90a": 232448, "sm_90": 232448, "sm_89": 101376, "sm_80": 166912, "sm_86": 101376}
PARALLEL_BLOCK = 64  # query/key tile rows of the CUDA parallel form


def build_config() -> dict:
    from ... import _tvm

    return {**_tvm.build_config(async_copy=True), "tirx.merge_static_smem": True}


def cuda_schedule(spec: LinearSpec, variant=None, *, tunable: bool = False):
    """The CUDA schedule (``tvm.s_tir.Schedule``) of ``spec`` with ``variant``'s value tile."""
    from ... import _tvm
    from ...schedules import linear as sched
    from .compute import Scopes

    if spec.form == "recurrent":
        variant = variant or sched.DEFAULT_RECURRENT_VARIANT
        sch = _tvm.Schedule(make_func(spec, block_v=variant.block_v, op_dtype=None,
                                      scopes=Scopes(state="local", vec="shared")))
        sched.apply_cuda_recurrent(sch, variant)
        return sch
    scopes = Scopes(tile="shared.dyn", acc="shared.dyn", solve="local")
    if spec.part:
        variant = variant or _default_variant(spec)
        sch = _tvm.Schedule(cuda_func(spec, variant))
        sched.apply_cuda_chunk_part(sch, spec.part, variant, spec.dtype, tunable=tunable)
        return sch
    variant = variant or sched.DEFAULT_CHUNK_VARIANT
    if spec.form == "chunk":
        sch = _tvm.Schedule(make_func(spec, block_v=variant.block_v, op_dtype=None, scopes=scopes))
        sched.apply_cuda_chunk(sch, variant, spec.dtype, chunk=spec.chunk, key_dim=spec.key_dim, tunable=tunable)
        return sch
    from . import compute

    sch = _tvm.Schedule(compute.parallel(spec.static, block_m=PARALLEL_BLOCK, block_v=variant.block_v,
                                         scopes=scopes))
    sched.apply_cuda_parallel(sch, variant, spec.dtype, block_m=PARALLEL_BLOCK, tunable=tunable)
    return sch


def cuda_func(spec: LinearSpec, variant):
    """The unscheduled CUDA function of a split kernel (``spec.part``) built with ``variant``'s tiles: the
    state and the products of the state and output kernels in mma register fragments."""
    from ...schedules.linear import delta_state_vt
    from .compute import Scopes

    scopes = Scopes(tile="shared.dyn", acc="shared.dyn", solve="local", frag="warp")
    block_v = min(variant.block_v, spec.value_dim)
    return make_func(spec, block_v=block_v, op_dtype=None, scopes=scopes, block_k=split_block_k(spec, variant),
                     stages=variant.stages, vt=delta_state_vt(block_v, variant.warps))


def split_block_k(spec: LinearSpec, variant) -> int | None:
    """The key tile of a split state kernel: the variant's for the add rule, all K for the delta rule."""
    if spec.part not in ("state", "state_local") or spec.static.rule == "delta" or not variant.block_k:
        return None
    return min(variant.block_k, spec.key_dim)


def build_cuda(spec: LinearSpec, arch: str = "sm_90a", variant=None):
    """Compile ``spec`` for ``arch``; raises ValueError when its shared memory exceeds the card's."""
    return compile_checked(spec, cuda_schedule(spec, variant), arch)


def compile_checked(spec: LinearSpec, sch, arch: str):
    """Compile a schedule of ``spec`` for ``arch``; raises ValueError when its shared memory exceeds the
    card's."""
    from ... import _tvm

    ex, smem = _tvm.compile_with_shared_memory(sch.mod, _tvm.cuda_target(arch), build_config())
    limit = SMEM_LIMIT.get(arch, SMEM_LIMIT["sm_90a"])
    if smem > limit:
        what = "mini_batch_size" if spec.op == "ttt_linear" else "chunk_size"
        raise ValueError(f"{spec.op} ({spec.form}, K={spec.key_dim}, {what}={spec.chunk}) needs {smem} bytes of "
                         f"shared memory per block on CUDA, more than the {limit} of {arch}; use a smaller {what}")
    return ex


def _default_variant(spec: LinearSpec):
    from ...schedules import linear as sched

    if spec.part:
        return sched.default_split_variant(spec.part, spec.static.rule, spec.static.gate, spec.tiles)
    return sched.DEFAULT_RECURRENT_VARIANT if spec.form == "recurrent" else sched.DEFAULT_CHUNK_VARIANT


def cuda_plan(spec: LinearSpec, tgt) -> Plan:
    """The tuned record of (split kernel, card) when one applies (``tune.dispatch``), else the default
    (the kernels tuning covers: ``split.PARTS``; the segmented passes' and the gate cumsum's have no
    records)."""
    from .split import PARTS

    if spec.part in PARTS:
        from ...tune import dispatch

        best = dispatch.lookup(spec, tgt)
        if best is not None:
            return Plan(f"tuned_{best.record_id}", lambda: dispatch.build_tuned(spec, tgt, best))
    return default_plan(spec, tgt.arch)


def default_plan(spec: LinearSpec, arch: str) -> Plan:
    variant = _default_variant(spec)
    return Plan(f"default_{variant.key}", lambda: build_cuda(spec, arch, variant))
