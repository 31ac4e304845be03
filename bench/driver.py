"""The benchmark driver: registry shapes, exact FLOPs/bytes, a correctness gate, baselines timed in the
same run, device ceilings, results with provenance.

    tvm-attn bench [--op flash_fwd] [--shapes quick|anchors|FILE.json] [--baselines sdpa-flash,...]
                   [--dtype bfloat16] [--out bench/results]      (also: python -m bench)

No speed is reported for an op that fails its check against the fp32 reference.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tvm_attn import registry

from .baselines import BASELINES, DEFAULT_CPU, DEFAULT_CUDA, Checked

REPO = Path(__file__).resolve().parent.parent
L2_DEFAULT = 50 << 20


# ---------------------------------------------------------------------------------------------- timing
def time_calls(fns: Sequence[Callable[[], object]], device: str, *, warmup: int = 3, min_s: float = 0.3,
               max_reps: int = 200) -> float:
    """Median seconds per call, cycling through ``fns`` (the same op on rotated input sets)."""
    for i in range(warmup):
        fns[i % len(fns)]()
    if device == "cuda":
        torch.cuda.synchronize()
        probe = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        probe[0].record()
        fns[0]()
        probe[1].record()
        torch.cuda.synchronize()
        est = max(probe[0].elapsed_time(probe[1]) / 1e3, 1e-6)
        reps = int(min(max_reps, max(10, min_s / est)))
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for i, (a, b) in enumerate(events):
            a.record()
            fns[i % len(fns)]()
            b.record()
        torch.cuda.synchronize()
        return statistics.median(a.elapsed_time(b) / 1e3 for a, b in events)
    times = []
    t_end = time.perf_counter() + min_s
    while len(times) < 5 or (time.perf_counter() < t_end and len(times) < max_reps):
        t = time.perf_counter()
        fns[len(times) % len(fns)]()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def kernel_time(fns: Sequence[Callable[[], object]], device: str, *, calls: int = 10) -> float | None:
    """Seconds per call the GPU spends in kernels (every kernel's and copy's duration as CUPTI records
    it, through torch.profiler, summed over ``calls`` calls and divided): the card's work, whatever the
    host's launch overhead. ``time_calls`` times what a caller waits for back to back, which is the
    host's time when launching a call's kernels takes longer than running them (short sequences, ops
    of many small launches). None on the CPU."""
    if device != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    for f in fns[:2]:
        f()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            fns[i % len(fns)]()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
    return total_us / calls / 1e6


def ceilings(device: str) -> dict:
    """Copy bandwidth (bytes read + written) and bf16/fp32 GEMM rate, measured now on this device."""
    if device == "cuda":
        n = 1 << 28
        a = torch.empty(n, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        t_copy = time_calls([lambda: b.copy_(a)], device)
        m = 8192
        x = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        y = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        t_mm = time_calls([lambda: x @ y], device)
        return {"copy_TBps": 2 * n / t_copy / 1e12, "gemm_bf16_8192_TFLOPs": 2 * m**3 / t_mm / 1e12}
    m = 1024
    x, y = torch.randn(m, m), torch.randn(m, m)
    t_mm = time_calls([lambda: x @ y], device)
    return {"gemm_fp32_1024_TFLOPs": 2 * m**3 / t_mm / 1e12}


# ------------------------------------------------------------------------------------- correctness gate
def _slice_spec(entry, shape) -> dict[str, slice]:
    # a slice of the problem whose fp32 reference fits in memory: first batch row, one kv head and the
    # query heads that read it (registry dim names drive the slicing)
    if not {"B", "Hq", "Hkv"} <= shape.keys() or shape["B"] * shape["Hq"] <= 4:
        return {}
    return {"B": slice(0, 1), "Hq": slice(0, shape["Hq"] // shape["Hkv"]), "Hkv": slice(0, 1)}


def _apply_slice(t, dims, sl):
    if not isinstance(t, torch.Tensor):
        return t
    return t[tuple(sl.get(d, slice(None)) for d in dims)]


def reference(entry, shape, inputs) -> tuple[dict[str, slice], torch.Tensor, torch.Tensor]:
    """(slice, fp32 reference, low-precision reference) of the first output on the checked slice."""
    sl = _slice_spec(entry, shape)
    ins = {t.name: _apply_slice(inputs[t.name], t.dims, sl) for t in entry.inputs}
    ins.update({k: v for k, v in inputs.items() if k not in ins})
    params = entry.params(shape)
    ref = entry.reference(**ins, **params)
    low = entry.reference(**ins, **params, upcast=False)
    return sl, (ref[0] if isinstance(ref, tuple) else ref).float(), (low[0] if isinstance(low, tuple) else low).float()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖₂ / ‖ref‖₂ over all elements (inf when out has a non-finite element)."""
    out = out.float()
    if not bool(torch.isfinite(out).all()):
        return math.inf
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def check(entry, shape, inputs, outputs, refs: tuple | None = None) -> dict:
    """FlashAttention's rule on the first output: error <= 2 x error of the low-precision reference + rounding.
    ``refs``: ``reference(entry, shape, inputs)`` when the caller already has it."""
    sl, ref, low = refs if refs is not None else reference(entry, shape, inputs)
    out = outputs[0] if isinstance(outputs, tuple) else outputs
    out = _apply_slice(out, entry.outputs[0].dims, sl)
    err = float((out.float() - ref).abs().max())
    err_low = float((low - ref).abs().max())
    r = ref.to(out.dtype)
    bound = 2 * err_low + 2 * float(((r + 0.3 - 0.3) - r).abs().max()) + (1e-5 if out.dtype == torch.float32 else 0)
    ok = bool(torch.isfinite(out).all()) and err <= bound
    return {"ok": ok, "max_err": err, "bound": bound, "ref_lowp_err": err_low, "sliced": bool(sl),
            "rel_err": rel_err(out, ref)}


# a checked baseline (fla) whose relative error exceeds this computes something else: not timed
BASELINE_REL_TOL = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 5e-2}


def check_baseline(entry, fn, refs: tuple, dtype: str) -> dict:
    """Run a ``Checked`` baseline once against the fp32 reference: {"rel_err", "max_err"} or, when it
    disagrees beyond ``BASELINE_REL_TOL``, {"missing": "not comparable: ..."} (it is then not timed)."""
    sl, ref, _ = refs
    try:
        out = _apply_slice(fn.first_output(fn()), entry.outputs[0].dims, sl)
    except Exception as e:  # noqa: BLE001  (reported, the other baselines still run)
        return {"missing": f"unavailable: {type(e).__name__}: {str(e)[:120]}"}
    if tuple(out.shape) != tuple(ref.shape):
        return {"missing": f"not comparable: output shape {tuple(out.shape)}, ours {tuple(ref.shape)}"}
    err, tol = rel_err(out, ref), BASELINE_REL_TOL[dtype]
    res = {"rel_err": err, "max_err": float((out.float() - ref).abs().max())}
    if not err <= tol:
        res["missing"] = f"not comparable: relative error {err:.2e} > {tol:.0e} against the fp32 reference"
    if fn.note:
        res["note"] = fn.note
    return res


# ------------------------------------------------------------------------------------------- the run
def load_shapes(entry, which: str) -> tuple[dict, ...]:
    if which.endswith(".json"):
        data = json.loads(Path(which).read_text())
        return tuple(data.get(entry.name, ()))
    return tuple(entry.shapes.get(which, ()))


def _rotations(inputs: dict, l2: int) -> int:
    size = sum(t.numel() * t.element_size() for t in inputs.values() if isinstance(t, torch.Tensor))
    return 1 if size >= 2 * l2 else min(8, math.ceil(2 * l2 / max(size, 1)))


def bench_point(entry, shape, dtype: str, device: str, baselines: Sequence[str], l2: int) -> dict:
    row = {"op": entry.name, "shape": dict(shape), "dtype": dtype, "flops": entry.flops(shape),
           "bytes": entry.bytes(shape, dtype)}
    sets = [entry.make_inputs(shape, getattr(torch, dtype), device, seed=0)]
    n_rot = _rotations(sets[0], l2)  # several input sets when one fits in L2, so we time memory, not cache
    sets += [entry.make_inputs(shape, getattr(torch, dtype), device, seed=s) for s in range(1, n_rot)]
    try:
        outputs = entry.run(sets[0], shape)
    except Exception as e:  # noqa: BLE001  (reported, not raised: the other points still run)
        row["error"] = f"{type(e).__name__}: {e}"[:300]
        return row
    refs = reference(entry, shape, sets[0])
    row["check"] = check(entry, shape, sets[0], outputs, refs)
    del outputs
    if not row["check"]["ok"]:
        return row
    row["schedule"] = _schedule_of(entry, shape, dtype, device)
    ours = [lambda s=s: entry.run(s, shape) for s in sets]
    row["ours_s"] = time_calls(ours, device)
    gpu = kernel_time(ours, device)
    if gpu is not None:
        row["ours_gpu_s"] = gpu
    row["baselines"] = {}
    for name in baselines:
        fns = [BASELINES[name](entry, shape, s) for s in sets]
        if isinstance(fns[0], str):
            row["baselines"][name] = {"missing": fns[0]}
            continue
        res = check_baseline(entry, fns[0], refs, dtype) if isinstance(fns[0], Checked) else {}
        if "missing" not in res:  # a baseline computing something else is not timed
            res["s"] = time_calls(fns, device)
            gpu = kernel_time(fns, device)
            if gpu is not None:
                res["gpu_s"] = gpu
        row["baselines"][name] = res
    del refs
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def _schedule_of(entry, shape, dtype: str, device: str) -> str | None:
    # which compiled schedule served this point (default decision or a tuned record id)
    from tvm_attn import kernels

    if entry.family != "flash":
        return None
    spec = kernels.KernelSpec(entry.name, shape["D"], shape["Hq"] // shape["Hkv"], dtype, shape["causal"])
    return kernels.get(spec, torch.device(device)).schedule


def provenance(device: str) -> dict:
    from tvm_attn import _tvm

    info = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": device,
            "torch": torch.__version__, "tvm": _tvm.TVM_VERSION, "tvm_ffi": _tvm.tvm_ffi.__version__,
            "python": platform.python_version(), "host": platform.node()}
    try:
        # a copy of the tree whose git metadata is not the code's commit (a device machine) names the
        # commit in TVM_ATTN_GIT, which wins
        info["git"] = os.environ.get("TVM_ATTN_GIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_dirty"] = bool(dirty)
    except OSError:
        info["git"] = None
    if device == "cuda":
        from tvm_attn.gpu import card_info

        info["card"] = card_info()
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["card"] = {"name": platform.processor() or platform.machine(), "key": "cpu", "cores": os.cpu_count()}
    return info


def run(ops: Sequence[str] | None = None, shapes: str = "quick", baselines: Sequence[str] | None = None,
        dtype: str | None = None, out: Path | None = None, device: str | None = None,
        where: dict[str, str] | None = None) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    baselines = list(baselines if baselines is not None else (DEFAULT_CUDA if device == "cuda" else DEFAULT_CPU))
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {sorted(BASELINES)}")
    entries = [registry.get(o) for o in ops] if ops else registry.all_ops()
    result = {"provenance": provenance(device), "ceilings": ceilings(device), "rows": []}
    l2 = (result["provenance"]["card"].get("l2_bytes") or L2_DEFAULT) if device == "cuda" else L2_DEFAULT
    result["complete"] = False
    for entry in entries:
        dts = [dtype] if dtype else [entry.dtypes[device][0] if device == "cpu" else "bfloat16"]
        for shape in load_shapes(entry, shapes):
            if any(str(shape.get(k)) != v for k, v in (where or {}).items()):
                continue
            for dt in dts:
                row = bench_point(entry, shape, dt, device, baselines, l2)
                result["rows"].append(row)
                print(format_row(row, result["ceilings"]), flush=True)
                if out is not None:  # every finished point is on disk: a killed run keeps what it measured
                    write_json(result, Path(out))
    result["complete"] = True
    if out is not None:
        write(result, Path(out))
    return result


# ------------------------------------------------------------------------------------------ reporting
def _shape_str(s: dict) -> str:
    if "seqlens_q" in s:
        return f"varlen N={len(s['seqlens_q'])} H={s['Hq']}/{s['Hkv']} D={s['D']}{' causal' if s['causal'] else ''}"
    if {"Tq", "Tk", "Hq", "Hkv"} <= s.keys():
        return (f"B={s['B']} Tq={s['Tq']} Tk={s['Tk']} H={s['Hq']}/{s['Hkv']} D={s['D']}"
                f"{' causal' if s.get('causal') else ''}")
    # other families: every axis and flag as given by the registry
    return " ".join(f"{k}={len(v) if isinstance(v, list) else v}" for k, v in s.items() if v is not None)


def format_row(row: dict, ceil: dict) -> str:
    head = f"{row['op']:<18} {_shape_str(row['shape']):<44} {row['dtype']:<9}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    if not row["check"]["ok"]:
        return f"{head} FAILED check: err {row['check']['max_err']:.2e} > {row['check']['bound']:.2e} (no timing)"
    t = row["ours_s"]
    parts = [f"{t * 1e3:8.3f} ms {row['flops'] / t / 1e12:7.1f} TFLOP/s"]
    if "gemm_bf16_8192_TFLOPs" in ceil:
        parts.append(f"{100 * row['flops'] / t / 1e12 / ceil['gemm_bf16_8192_TFLOPs']:4.0f}% of GEMM")
    for name, b in row["baselines"].items():
        err = f" (err {b['rel_err']:.1e})" if "rel_err" in b else ""
        gpu = f" kernels {b['gpu_s'] / row['ours_gpu_s']:.2f}x" if "gpu_s" in b and row.get("ours_gpu_s") else ""
        parts.append(f"{name} -" if "missing" in b else f"{name} {b['s'] / t:.2f}x{gpu}{err}")
    return f"{head} " + " | ".join(parts)


def write_json(result: dict, out: Path) -> Path:
    """``<out>/<card key>/bench-<start stamp>.json``, replaced atomically (``complete`` false until the
    run's last point)."""
    key = result["provenance"]["card"]["key"]
    stamp = result["provenance"]["date"].replace(":", "").replace("-", "")[:15]
    folder = out / key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench-{stamp}.json"
    write_json_atomic(result, path)
    return path


def write_json_atomic(obj, path: Path) -> None:
    """``obj`` as JSON at ``path``, written atomically (``tune.records.write_atomic``: a reader, or a run
    killed mid-write, never sees half a file)."""
    from tvm_attn.tune.records import write_atomic

    write_atomic(path, json.dumps(obj, indent=1))


def write(result: dict, out: Path) -> Path:
    path = write_json(result, out)
    from .report import render

    render(path)
    print(f"wrote {path}")
    return path
