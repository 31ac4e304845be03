"""Linear-attention specialisations -> compiled kernels (through ``tvm_attn.kernels.compiled``).

A ``LinearSpec`` is an op, a form and the static parameters one compiled module is specialised on;
batch, heads and sequence lengths stay symbolic. CPU kernels compute in fp32 whatever the inputs'
dtype; CUDA chunk kernels feed the inputs' dtype to the tensor cores and accumulate in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

from ... import kernels
from ...kernels import DeviceTarget, Kernel, Plan
from .kinds import FORMS, OP_KINDS


@dataclass(frozen=True)
class LinearSpec:
    """An op, its form and its static parameters (what one compiled module is specialised on)."""

    op: str  # a key of compute.OP_KINDS
    form: str  # chunk | recurrent | parallel
    key_dim: int  # K
    value_dim: int  # V
    dtype: str  # float16 | bfloat16 | float32
    varlen: bool
    chunk: int = 0  # chunk size (chunk form), mini-batch size (ttt), 0 otherwise
    part: str = ""  # a split chunk kernel (split.PARTS; state_local, carry: the segmented state pass), "" none
    tiles: str = ""  # a split kernel's tiling for a class of shapes (kinds.SPLIT_TILINGS); "" the default

    @property
    def key(self) -> str:
        """Readable specialisation name (cache key, tuning-record directory)."""
        c = f"_c{self.chunk}" if self.chunk else ""
        part = f"_{self.part}" + (f"_{self.tiles}" if self.tiles else "") if self.part else ""
        return (f"linear_{self.op}_{self.form}{part}_k{self.key_dim}_v{self.value_dim}_{self.dtype}{c}_"
                f"{'varlen' if self.varlen else 'dense'}")

    @property
    def static(self):
        from .compute import LinearStatic

        return LinearStatic(self.op, self.key_dim, self.value_dim, self.dtype, self.varlen)


# tile rows of the CPU parallel form (queries and keys per tile)
CPU_PARALLEL_BLOCK = 64
# the delta rule's state kernel on the CPU: V' formed transposed (``split.state``'s ``vt``), as CUDA
# tiles whose warps own value tiles form it; the tests run the other form too
CPU_DELTA_VT = True


def make_func(spec: LinearSpec, *, block_v: int, op_dtype: str | None, scopes, block_k: int | None = None,
              stages: int = 0, vt: bool = True):
    """The unscheduled PrimFunc of ``spec`` (``block_k``, ``stages``: the key tile and the pipeline depth
    of a split state kernel; ``vt``: the delta rule's state kernel forms V' transposed, in registers,
    ``split.state``)."""
    from . import compute

    st = spec.static
    if spec.part:
        from . import split, split_gla

        kernels_of = split_gla if st.gate == "vector" else split
        kw = {"chunk_size": spec.chunk, "op_dtype": op_dtype, "smem": scopes.tile, "acc": scopes.acc}
        if spec.part == "prep":
            return split.prep(st, **kw, solve=scopes.solve, frag=scopes.frag)
        if spec.part == "carry":
            return split.carry(st)
        if spec.part == "cumsum":
            return split.gate_cumsum(st, chunk_size=spec.chunk)
        if spec.part == "fused":
            from .split_fused import fused

            return fused(st, **kw, block_v=block_v, frag=scopes.frag, solve=scopes.solve, min_chunks=stages)
        if spec.part in ("state", "state_local"):
            extra = {"local": True} if spec.part == "state_local" else {}
            if st.rule == "delta":
                extra["vt"] = vt
            return kernels_of.state(st, **kw, block_v=block_v, block_k=block_k, frag=scopes.frag, solve=scopes.solve,
                                    min_chunks=stages, **extra)
        if st.gate == "vector":
            kw["solve"] = scopes.solve
        return kernels_of.output(st, **kw, block_v=block_v, frag=scopes.frag)
    if spec.form == "recurrent":
        return compute.recurrent(st, block_v=block_v, mini_batch=max(spec.chunk, 1), scopes=scopes)
    if spec.form == "chunk":
        return compute.chunk(st, chunk_size=spec.chunk, block_v=block_v, op_dtype=op_dtype, scopes=scopes)
    return compute.parallel(st, block_m=CPU_PARALLEL_BLOCK, block_v=block_v, op_dtype=op_dtype, scopes=scopes)


def build_cpu(spec: LinearSpec):
    from ... import _tvm
    from ...schedules.linear import apply_cpu
    from .compute import Scopes

    sch = _tvm.Schedule(make_func(spec, block_v=spec.value_dim, op_dtype="float32", scopes=Scopes(),
                                  vt=CPU_DELTA_VT))
    apply_cpu(sch)
    return _tvm.compile_module(sch.mod, _tvm.cpu_target())


def plan(spec: LinearSpec, tgt: DeviceTarget) -> Plan:
    if tgt.kind == "cpu":
        return Plan("cpu" if CPU_DELTA_VT else "cpu_delta_smem", lambda: build_cpu(spec))
    from .cuda import cuda_plan

    return cuda_plan(spec, tgt)


_by_spec: dict = {}


def get(spec: LinearSpec, device) -> Kernel:
    """The compiled kernel of ``spec`` for a torch device (in-process and on-disk cached). The hot path
    is one dict lookup: the tuned-record lookup, the disk cache and the build happen once per (spec,
    device) and process."""
    tgt = kernels.device_target(device)
    kern = _by_spec.get((spec, tgt))
    if kern is None:
        if spec.op not in OP_KINDS or spec.form not in FORMS:
            raise ValueError(f"no linear-attention kernel for op {spec.op!r}, form {spec.form!r}")
        kern = kernels.compiled(spec.key, spec, tgt, plan(spec, tgt))
        _by_spec[(spec, tgt)] = kern
    return kern
