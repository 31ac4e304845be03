"""Specialisation -> compiled module: the build, the in-process cache and the on-disk cache.

A ``KernelSpec`` is an op plus its static parameters; the batch, head counts and sequence lengths stay
symbolic, so one module serves every length. Modules are cached in-process and on disk under
``$TVM_ATTN_CACHE_DIR`` (default ``~/.cache/tvm_attn``), keyed by spec, schedule, target, TVM version
and a digest of the compute and schedule sources; files are written to a temporary name and renamed,
so two processes building the same key never leave a torn file.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_PKG = Path(__file__).resolve().parent


@dataclass(frozen=True)
class KernelSpec:
    """An op and its static parameters (what one compiled module is specialised on)."""

    op: str  # "flash_fwd" | "flash_fwd_varlen"
    head_dim: int
    group: int  # Hq / Hkv
    dtype: str  # "float16" | "bfloat16" | "float32"
    causal: bool

    @property
    def varlen(self) -> bool:
        return self.op.endswith("_varlen")

    @property
    def key(self) -> str:
        """Readable specialisation name, also the directory name of its tuning records."""
        return f"{self.op}_d{self.head_dim}_g{self.group}_{self.dtype}_{'causal' if self.causal else 'full'}"


@dataclass(frozen=True)
class DeviceTarget:
    """Where a kernel runs: ``cpu`` or ``cuda`` with its architecture (``sm_90a``) and card key (``h100``)."""

    kind: str
    arch: str | None = None
    card: str = "cpu"

    @property
    def tag(self) -> str:
        return self.kind if self.arch is None else f"{self.kind}_{self.arch}_{self.card}"


@dataclass
class Kernel:
    """A compiled specialisation: ``fn(*tensors, *scalars)`` in destination-passing style."""

    spec: Any  # KernelSpec for flash; each family's own spec type otherwise
    target: DeviceTarget
    schedule: str  # "cpu", "default:<variant>" or "tuned:<record id>"
    fn: Callable[..., Any]
    module: Any  # keeps the runtime module alive

    def __call__(self, *args: Any) -> None:
        self.fn(*args)


def device_target(device) -> DeviceTarget:
    """The target for a torch device (CUDA: from its compute capability; 9.0 -> sm_90a)."""
    if device.type == "cpu":
        return DeviceTarget("cpu")
    if device.type == "cuda":
        return _cuda_target(device.index if device.index is not None else 0)
    raise ValueError(f"unsupported device {device}")


@functools.cache
def _cuda_target(index: int) -> DeviceTarget:
    import torch

    from .gpu import gpu_key

    major, minor = torch.cuda.get_device_capability(index)
    return DeviceTarget("cuda", f"sm_{major}{minor}{'a' if major >= 9 else ''}",
                        gpu_key(torch.cuda.get_device_name(index)))


def cache_dir() -> Path:
    return Path(os.environ.get("TVM_ATTN_CACHE_DIR", Path.home() / ".cache" / "tvm_attn"))


@functools.cache
def source_digest() -> str:
    """Digest of everything that shapes a compiled module: the TVM layer, computes and schedules."""
    from . import schedules

    h = hashlib.sha256()
    roots = [_PKG / "_tvm.py", _PKG / "kernels.py", _PKG / "ops", Path(schedules.__file__).parent]
    for root in roots:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


_lock = threading.Lock()
_loaded: dict[str, Kernel] = {}
_by_spec: dict[tuple[KernelSpec, DeviceTarget], Kernel] = {}


def get(spec: KernelSpec, device) -> Kernel:
    """The compiled flash kernel of ``spec`` for a torch device. The hot path is one dict lookup: the
    record lookup, the disk cache and the build happen once per (spec, device) and process."""
    tgt = device_target(device)
    kern = _by_spec.get((spec, tgt))
    if kern is None:
        kern = compiled(spec.key, spec, tgt, _plan(spec, tgt))
        _by_spec[(spec, tgt)] = kern
    return kern


def compiled(name: str, spec: Any, tgt: DeviceTarget, plan: "Plan") -> Kernel:
    """Generic cache: the module ``plan.build()`` makes, keyed by ``name`` (a readable specialisation
    name), target, schedule, TVM version and source digest; in-process first, then on disk."""
    key = f"{name}-{tgt.tag}-{plan.name}-{_tvm_version()}-{source_digest()}"
    kern = _loaded.get(key)
    if kern is not None:
        return kern
    with _lock:
        kern = _loaded.get(key)
        if kern is None:
            kern = _load_or_build(key, spec, tgt, plan)
            _loaded[key] = kern
    return kern


@dataclass(frozen=True)
class Plan:
    """How a specialisation is scheduled: a name for cache keys, and a function that builds it."""

    name: str
    build: Callable[[], Any]  # -> tvm Executable


def _plan(spec: KernelSpec, tgt: DeviceTarget) -> Plan:
    """The tuned record of (spec, card) when one applies, else the default decision."""
    from .tune import dispatch

    best = dispatch.lookup(spec, tgt)
    return tuned_plan(spec, tgt, best) if best is not None else default_plan(spec, tgt)


def default_plan(spec: KernelSpec, tgt: DeviceTarget) -> Plan:
    if tgt.kind == "cpu":
        return Plan("cpu_default", lambda: build_cpu(spec))
    variant = default_variant(spec)
    return Plan(f"default_{variant.key}w{variant.warps}v{variant.vec}", lambda: build_cuda(spec, variant, tgt.arch))


def tuned_plan(spec: KernelSpec, tgt: DeviceTarget, best) -> Plan:
    """A plan replaying a tuned trace (``tune.run.Best``) onto the symbolic function."""
    from .tune import dispatch

    return Plan(f"tuned_{best.record_id}", lambda: dispatch.build_tuned(spec, tgt, best))


def default_variant(spec: KernelSpec):
    from .schedules.flash import DEFAULT_VARIANTS

    variant = DEFAULT_VARIANTS[spec.head_dim]
    if spec.varlen:
        # the pipeline predicates its next-tile copy on the data-dependent trip count, which the CUDA
        # barrier pass refuses; varlen copies synchronously (README, Performance)
        variant = dataclasses.replace(variant, stages=0)
    return variant


def flash_static(spec: KernelSpec):
    from .ops.flash.compute import FlashStatic

    return FlashStatic(spec.head_dim, spec.group, spec.dtype, spec.causal, spec.varlen)


CPU_TILES = (64, 64)


def build_cpu(spec: KernelSpec):
    from . import _tvm
    from .ops.flash.compute import FlashTiles, flash_forward
    from .schedules.flash import apply_cpu

    sch = _tvm.Schedule(flash_forward(flash_static(spec), FlashTiles(*CPU_TILES)))
    apply_cpu(sch)
    return _tvm.compile_module(sch.mod, _tvm.cpu_target())


def cuda_schedule(spec: KernelSpec, variant):
    """The default-decision CUDA schedule of ``spec`` (a ``tvm.s_tir.Schedule``)."""
    from . import _tvm
    from .ops.flash.compute import flash_forward
    from .schedules.flash import apply_cuda

    func = flash_forward(flash_static(spec), variant.tiles, smem="shared.dyn", warp="warp")
    sch = _tvm.Schedule(func)
    apply_cuda(sch, variant, spec.dtype)
    return sch


def build_cuda(spec: KernelSpec, variant, arch: str = "sm_90a"):
    from . import _tvm

    sch = cuda_schedule(spec, variant)
    return _tvm.compile_module(sch.mod, _tvm.cuda_target(arch), _tvm.build_config(async_copy=variant.stages > 0))


def _tvm_version() -> str:
    from . import _tvm

    return "tvm" + _tvm.TVM_VERSION


def _load_or_build(key: str, spec: Any, tgt: DeviceTarget, plan: Plan) -> Kernel:
    from . import _tvm

    path = cache_dir() / f"{key}.so"
    mod = None
    if path.exists():
        try:
            mod = _tvm.tvm.runtime.load_module(str(path))
        except Exception:  # noqa: BLE001  (a file from an interrupted or foreign build: rebuild it)
            mod = None
    if mod is None:
        ex = plan.build()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            ex.export_library(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        mod = _tvm.tvm.runtime.load_module(str(path))
    return Kernel(spec, tgt, plan.name, mod["main"], mod)
