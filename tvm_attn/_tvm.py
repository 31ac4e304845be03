"""Every Apache TVM import of tvm-attn, and the 0.27 workarounds, in one place.

Importing this module imports TVM (a few seconds); the rest of the package imports it lazily, so
``import tvm_attn`` stays fast. The next rename in TVM is absorbed here and nowhere else.
"""
from __future__ import annotations

import functools
import inspect
import linecache
import os
import re
import shutil
import sys

import tvm
import tvm_ffi
from tvm import tirx
from tvm.s_tir import Schedule, TensorIntrin
from tvm.s_tir.schedule import Trace
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T
from tvm.ir.utils import derived_object
from tvm.target import Target

__all__ = [
    "T", "Schedule", "Target", "Trace", "derived_object", "TensorIntrin", "ms", "tirx", "tvm", "tvm_ffi",
    "TVM_VERSION", "compile_module", "cuda_source", "compile_cuda_source", "cpu_target", "cuda_target",
    "import_tensor_intrin", "mma_intrins", "fragment_map", "build_config",
]

TVM_VERSION: str = tvm.__version__

# TVM compiles CUDA through NVRTC unless told otherwise; nvcc is what CUDA machines reliably have
if shutil.which("nvcc"):
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


def cpu_target() -> Target:
    """The LLVM target of this host, with its core count (0.27 takes targets as JSON dicts only)."""
    return Target({"kind": "llvm", "num-cores": os.cpu_count() or 1})


def cuda_target(arch: str = "sm_90a") -> Target:
    """A CUDA target for ``arch`` (sm_90a: Hopper with the arch-specific instructions)."""
    return Target({"kind": "cuda", "arch": arch})


def _fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    # inspect.stack() resolves a module per frame, which is slow inside an import; TVMScript only needs
    # the file, line and source line of each frame.
    frames = []
    f = sys._getframe(1)
    while f is not None:
        fn, ln = f.f_code.co_filename, f.f_lineno
        line = linecache.getline(fn, ln) if context else ""
        frames.append(inspect.FrameInfo(f, fn, ln, f.f_code.co_name, [line] if line else None, 0 if line else None))
        f = f.f_back
    return frames


@functools.cache
def import_tensor_intrin() -> None:
    """Register TVM's CUDA tensor intrinsics (5 s instead of about 60 s) and tvm-attn's bf16 ones.

    Picklable and idempotent: MetaSchedule builder workers run it as their ``initializer``.
    """
    orig = inspect.stack
    inspect.stack = _fast_stack
    try:
        import tvm.s_tir.tensor_intrin.cuda  # noqa: F401  (registers ~90 intrinsics)
    finally:
        inspect.stack = orig
    _register_bf16()
    for dt in ("float16", "bfloat16"):
        _register_a_trans(dt)


# TVM 0.27 registers f16, int8 and fp8 mma.sync intrinsics but no bf16 one. ldmatrix moves 16-bit words
# whatever they mean, and mma.sync m16n8k16 has a bf16 x bf16 -> f32 form with the same fragment layouts,
# so each bf16 intrinsic is the f16 one with the element type renamed.
_BF16_FROM_F16 = {
    "mma_bf16bf16f32": "mma_f16f16f32",
    "mma_bf16bf16f32_trans_b": "mma_f16f16f32_trans_b",
    "mma_ldmatrix_bf16_a_dyn": "mma_ldmatrix_f16_a_dyn",
    "mma_ldmatrix_bf16_b_dyn": "mma_ldmatrix_f16_b_dyn",
    "mma_ldmatrix_bf16_b_trans_dyn": "mma_ldmatrix_f16_b_trans_dyn",
}
_BF16_PREFIX = "tvm_attn_"


def _register_bf16() -> None:
    for name, f16_name in _BF16_FROM_F16.items():
        full = _BF16_PREFIX + name
        try:
            TensorIntrin.get(full)
            continue
        except Exception:  # noqa: BLE001  (not registered yet: TVM raises a generic error)
            pass
        src = TensorIntrin.get(f16_name)
        desc, impl = (tvm.script.from_source(_bf16_script(f.script())) for f in (src.desc, src.impl))
        TensorIntrin.register(full, desc, impl)


def _bf16_script(script: str) -> str:
    text = script.replace('"float16"', '"bfloat16"').replace('"fp16"', '"bf16"').replace("T.float16", "T.bfloat16")
    # The printed ldmatrix call drops its element-type argument, and re-parsed without one it defaults to
    # int8, for which codegen replaces ldmatrix.trans by a scalar loop. The element type only scales the
    # offsets (2 bytes either way), so name the 16-bit type codegen knows.
    return re.sub(r"(T\.ptx_legacy\.ldmatrix\(.*)\)[ \t]*$", lambda m: m.group(1) + ', dtype="float16")', text,
                  flags=re.M)


def _a_trans_name(dtype: str) -> str:
    return f"{_BF16_PREFIX}ldmatrix_{'f16' if dtype == 'float16' else 'bf16'}_a_trans_frag_dyn"


def _register_a_trans(dtype: str) -> None:
    """ldmatrix.trans of a 16x16 tile stored [K, M] (row k holds 16 m's) into the mma A fragment of its
    transpose, described element by element in the fragment's own (m, k) layout. TVM's own A-trans
    intrinsic describes its result in the (k, m) layout its trans-A mma expects, so an element-wise pass
    over the fragment (e.g. a per-k scale) could not be written against it."""
    name = _a_trans_name(dtype)
    try:
        TensorIntrin.get(name)
        return
    except Exception:  # noqa: BLE001  (not registered yet: TVM raises a generic error)
        pass
    from tvm.s_tir.tensor_intrin.cuda import shared_16x16_to_ldmatrix_32x8_layout as frag

    @T.prim_func(s_tir=True)
    def desc(warp_handle: T.handle, shared_handle: T.handle) -> None:
        shared = T.match_buffer(shared_handle, (16, 16), dtype, align=64, offset_factor=16, scope="shared.dyn")
        warp = T.match_buffer(warp_handle, (32, 8), dtype, align=64, offset_factor=16, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:16, 0:16])
            T.writes(warp[0:32, 0:8])
            for ax0, ax1 in T.grid(16, 16):
                with T.sblock("shared_warp"):
                    v0, v1 = T.axis.remap("SS", [ax0, ax1])  # (k, m)
                    T.reads(shared[v0, v1])
                    lane, reg = T.meta_var(frag(v1, v0))
                    T.writes(warp[lane, reg])
                    warp[lane, reg] = shared[v0, v1]

    @T.prim_func(s_tir=True)
    def impl(warp_handle: T.handle, shared_handle: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        shared = T.match_buffer(shared_handle, (16, 16), dtype, align=64, offset_factor=16, scope="shared.dyn",
                                strides=[s0, s1])
        warp = T.match_buffer(warp_handle, (32, 8), dtype, align=64, offset_factor=16, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:16, 0:16])
            T.writes(warp[0:32, 0:8])
            for tx in T.thread_binding(0, 32, "threadIdx.x"):
                # lane tx addresses row (k) 8 (tx / 16) + tx % 8, columns (m) from 8 ((tx % 16) / 8): the
                # four 8x8 matrices are the fragment's registers {0,1}, {2,3}, {4,5}, {6,7} transposed
                T.evaluate(T.ptx_legacy.ldmatrix(
                    True, 4, ".b16", warp.data, warp.elem_offset + 8 * tx, shared.access_ptr("r"),
                    s0 * 8 * (tx // 16) + s0 * (tx % 8) + 8 * ((tx % 16) // 8), dtype="float16"))

    TensorIntrin.register(name, desc, impl)


def mma_intrins(dtype: str) -> dict[str, str]:
    """Names of the ldmatrix (from ``shared.dyn``) and m16n8k16 mma intrinsics for fp16 or bf16 operands.

    ``_nk``: the B operand is stored [N, K] (Kᵀ in S = Q Kᵀ); ``_kn``: stored [K, N] (V in P V). Tensorize
    cannot tell the two ldmatrix forms apart (their descriptions match the same copy), so pick by name.
    A register fragment (an mma result) can feed a later mma as its A operand only: the descriptions' A
    and C layouts are the hardware's, their B layouts are not (only their own ldmatrix loads match them).
    """
    import_tensor_intrin()
    if dtype == "float16":
        return {"load_a": "mma_ldmatrix_f16_a_dyn", "load_b_kn": "mma_ldmatrix_f16_b_dyn",
                "load_b_nk": "mma_ldmatrix_f16_b_trans_dyn", "load_a_t": _a_trans_name(dtype),
                "mma": "mma_f16f16f32", "mma_b_nk": "mma_f16f16f32_trans_b"}
    if dtype == "bfloat16":
        p = _BF16_PREFIX
        return {"load_a": p + "mma_ldmatrix_bf16_a_dyn", "load_b_kn": p + "mma_ldmatrix_bf16_b_dyn",
                "load_b_nk": p + "mma_ldmatrix_bf16_b_trans_dyn", "load_a_t": _a_trans_name(dtype),
                "mma": p + "mma_bf16bf16f32", "mma_b_nk": p + "mma_bf16bf16f32_trans_b"}
    raise ValueError(f"no tensor-core intrinsics for dtype {dtype!r}")


def fragment_map(i, j):
    """(row, col) of a 16x16 tile -> (lane, register) of the mma.sync A/C fragment."""
    import_tensor_intrin()
    from tvm.s_tir.tensor_intrin.cuda import shared_16x16_to_ldmatrix_32x8_layout

    return shared_16x16_to_ldmatrix_32x8_layout(i, j)


# --- LowerWarpMemory --------------------------------------------------------------------------------
# 0.27's LowerWarpMemory lowers only the first warp-scope allocation among siblings; the others stay
# per-thread copies of the whole warp tile and cross-lane reads come out wrong. Running the pass until
# nothing changes lowers them all. The s_tir pipeline builds its pass list on every compile, so the
# pass is replaced where the pipeline looks it up.
_LWM_ORIG = tirx.transform.LowerWarpMemory


def _lower_warp_memory_repeated() -> tvm.transform.Pass:
    return tvm.transform.Sequential([*(_LWM_ORIG() for _ in range(32)), _unroll_async_waits()],
                                    name="LowerWarpMemoryRepeated")


# A software pipeline of 2+ asynchronous stages drains in a loop whose cp.async wait counts depend on the
# loop variable, and CUDA codegen needs them constant. Unrolling explicitly before the warp-memory pass
# breaks that pass (it cannot lower the constant-folded lane indices), so the loops those wait counts
# depend on are unrolled here, after it (in the same slot of the pipeline), with the constant loops of at
# most UNROLL_MAX_EXTENT iterations (the tile loops over fragments and warps). Not every constant loop: a
# kernel specialised to concrete lengths (what tuning measures) has a constant chunk loop too, and writing
# every chunk out made 200k lines of CUDA for 32 chunks, which nvcc did not finish compiling. For the
# kernels at symbolic lengths this emits the same CUDA as unrolling every constant loop did.
UNROLL_MAX_EXTENT = 16


def _variable_async_waits(node) -> list:
    found = []

    def visit(n):
        if isinstance(n, tirx.AttrStmt) and n.attr_key == "async_wait_inflight_count" \
                and not isinstance(n.value, tirx.IntImm):
            found.append(n.value)

    tvm_ffi.structural_walk(node, [(object, visit)], order="pre")
    return found


def _uses_var(expr, var) -> bool:
    hit = []
    tvm_ffi.structural_walk(expr, [(tirx.Var, lambda v: hit.append(True) if v.same_as(var) else None)],
                            order="pre")
    return bool(hit)


def _mark_wait_loops_unrolled(mod, waits: list):
    # a loop variable is bound only inside its loop, so a wait count that uses it is in the loop's body
    def visit_for(loop, mutator):
        loop = mutator.default_mutate(loop)
        if loop.kind == tirx.ForKind.SERIAL and isinstance(loop.extent, tirx.IntImm) and any(
                _uses_var(w, loop.loop_var) for w in waits):
            return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.UNROLLED, loop.body,
                            loop.thread_binding, loop.annotations)
        return loop

    return tvm_ffi.structural_mutate(mod, [(tirx.For, visit_for)])


def _unroll_async_waits() -> tvm.transform.Pass:
    def run(mod, ctx):
        waits = _variable_async_waits(mod)
        if not waits:
            return mod
        mod = _mark_wait_loops_unrolled(mod, waits)
        cfg = {**ctx.config, "tirx.UnrollLoop": {"auto_max_extent": UNROLL_MAX_EXTENT, "auto_max_depth": 64,
                                                  "explicit_unroll": True}}
        with tvm.transform.PassContext(opt_level=ctx.opt_level, config=cfg):
            return tvm.transform.Sequential([tirx.transform.UnrollLoop(), tirx.transform.StmtSimplify()])(mod)

    return tvm.transform.module_pass(run, opt_level=0, name="UnrollAsyncWaits")


def _patch_lower_warp_memory() -> None:
    tirx.transform.LowerWarpMemory = _lower_warp_memory_repeated
    tvm.s_tir.transform.ThreadSync = _thread_sync


# Our warp-scope buffers are mma fragments and softmax statistics: each lane touches only its own
# registers, and a read of another lane's slot becomes __shfl_sync, which synchronises by itself, so
# a "warp" storage sync never has anything to order. 0.27's planner cannot prove that a lane's in-place
# update of its own fragment is private and refuses to place the (useless) sync when the update sits
# under a branch, such as the mask of a boundary key tile; the warp-scope pass is therefore skipped.
_THREAD_SYNC_ORIG = tvm.s_tir.transform.ThreadSync


def _thread_sync(storage_scope: str) -> tvm.transform.Pass:
    if storage_scope == "warp":
        return tvm.transform.Sequential([], name="ThreadSyncWarpSkipped")
    return _THREAD_SYNC_ORIG(storage_scope)


def build_config(async_copy: bool = True) -> dict:
    """PassContext options every CUDA flash build needs: CSE off (it hides the lane index from
    LowerWarpMemory) and cp.async for the pipelined K/V copies."""
    return {"tirx.disable_cse_tir": True, "tirx.use_async_copy": async_copy,
            "tirx.UnrollLoop": {"explicit_unroll": False}}


def compile_module(mod, target: Target, config: dict | None = None):
    """``tvm.compile`` under a PassContext; CUDA builds get the warp-memory workaround."""
    if target.kind.name == "cuda":
        import_tensor_intrin()
        _patch_lower_warp_memory()
    with tvm.transform.PassContext(opt_level=3, config=config or {}):
        return tvm.compile(mod, target=target)


def cuda_source(executable) -> str:
    """The CUDA C++ of a module built for a CUDA target."""
    return executable.mod.imports[0].inspect_source()


def compile_cuda_source(src: str, arch: str = "sm_90a", fmt: str = "cubin") -> bytes:
    """Compile CUDA C++ with nvcc for ``arch`` (works without a GPU)."""
    from tvm.support.nvcc import compile_cuda

    with cuda_target(arch):
        return compile_cuda(src, target_format=fmt, compiler="nvcc")


def device_for(kind: str, index: int = 0):
    return tvm.cuda(index) if kind == "cuda" else tvm.cpu(index)


# --- Relax and its ONNX frontend (export/: ONNX -> TVM) ---------------------------------------------
def relax_onnx():
    """``(relax, onnx_frontend)``: TVM Relax and the module of its ONNX frontend, imported on first use."""
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    return relax, onnx_frontend


# --- linear-attention family (tvm_attn.ops.linear) ---------------------------------------------------
def compile_with_shared_memory(mod, target: Target, config: dict | None = None):
    """``compile_module`` that also reports the kernel's dynamic shared memory in bytes (the merged
    ``shared.dyn`` pool, read after MergeSharedMemoryAllocations; 0 when there is none)."""
    import re

    sizes: list[int] = []

    @tvm.instrument.pass_instrument
    class _SharedMemory:
        def run_after_pass(self, mod, info):
            if info.name.endswith("MergeSharedMemoryAllocations"):
                sizes.extend(int(n) for n in re.findall(
                    r'alloc_buffer\(\((\d+),\), "uint8", scope="shared\.dyn"\)', mod.script()))

    if target.kind.name == "cuda":
        import_tensor_intrin()
        _patch_lower_warp_memory()
    with tvm.transform.PassContext(opt_level=3, config=config or {}, instruments=[_SharedMemory()]):
        ex = tvm.compile(mod, target=target)
    return ex, max(sizes, default=0)
