"""The example block through ONNX and back through TVM, timed (issue 5).

    tvm-attn bench-onnx --example llama-block --target cuda|llvm [--batch 1,4] [--seq 2048] [--dtype float16]
                        [--out DIR]

Builds the example model at a realistic shape (CUDA: hidden 2048, 16 query / 4 kv heads of 128, SwiGLU
2048 -> 5632, T 2048; llvm: a tiny block), exports it with ``to_onnx``, compiles it back with
``from_onnx`` for the target (its attention on tvm-attn's flash kernel, the schedule ``kernels.get``
gives the torch ops), checks the output against torch eager on the same model (and onnxruntime), then
times, with ``driver.time_calls`` (CUDA events, warm-up, medians): the TVM-compiled model, torch eager
(its attention is the tvm-attn torch op, the rest cuBLAS / ATen) and onnxruntime (CUDA: only with its
CUDAExecutionProvider, else recorded as not timed; llvm: its CPU provider). An engine that fails the
check gets no time. JSON + markdown under ``bench/results/<gpu-key>/onnx-<stamp>.*`` on CUDA, under
``--out`` on llvm.

Check: relative error ‖y − y_torch‖₂ / ‖y_torch‖₂ of the block output, at most ``REL_TOL[dtype]``
(fp32 1e-4, fp16 1e-2, bf16 2e-2), with the max abs error recorded beside it.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .driver import provenance, time_calls

REPO = Path(__file__).resolve().parent.parent
REL_TOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}
# model sizes per target: hidden size, query heads, kv heads, MLP hidden size
SIZES = {"cuda": {"dim": 2048, "heads": 16, "kv_heads": 4, "hidden": 5632},
         "llvm": {"dim": 256, "heads": 4, "kv_heads": 2, "hidden": 512}}
DEFAULTS = {"cuda": {"batch": (1, 4), "seq": 2048, "dtype": "float16"},
            "llvm": {"batch": (2,), "seq": 64, "dtype": "float32"}}
EXPORT_SHAPE = (2, 64)  # (B, T) of the export's example input: torch.export fixes an axis of size 1


def build(example: str, target: str, max_len: int, dtype: str, device: str, seed: int = 0) -> torch.nn.Module:
    """The example model at this target's sizes, in ``dtype`` on ``device`` (seeded weights)."""
    from tvm_attn.export.examples import LlamaBlock

    if example != "llama-block":
        raise ValueError(f"unknown example {example!r}; known: llama-block")
    torch.manual_seed(seed)
    model = LlamaBlock(**SIZES[target], max_len=max_len).eval()
    return model.to(device=device, dtype=getattr(torch, dtype))


def export(model: torch.nn.Module, path: Path, dim: int, max_len: int, dtype: str, device: str):
    from tvm_attn.export import to_onnx

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=max_len)
    x = torch.randn(*EXPORT_SHAPE, dim, dtype=getattr(torch, dtype), device=device)
    return to_onnx(model, (x,), path, dynamic_shapes=({0: batch, 1: seq},))


def compare(got: torch.Tensor, want: torch.Tensor, dtype: str) -> dict:
    """Relative and max abs error of ``got`` against ``want`` and whether it is within ``REL_TOL``."""
    got, want = got.float(), want.float()
    finite = bool(torch.isfinite(got).all())
    rel = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want)) if finite else math.inf
    mx = float((got - want).abs().max()) if finite else math.inf
    return {"rel_err": rel, "max_abs_err": mx, "tol": REL_TOL[dtype], "ok": rel <= REL_TOL[dtype]}


def _ort_session(path: Path, target: str):
    """(session, None) with the provider this target is timed against, or (None, why not)."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if target == "llvm":
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), None
    if "CUDAExecutionProvider" not in providers:
        return None, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider here (providers: {providers})"
    # onnxruntime on torch's stream, so the CUDA events time its kernels
    opts = {"device_id": torch.cuda.current_device(), "user_compute_stream": str(torch.cuda.current_stream().cuda_stream)}
    sess = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", opts), "CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in sess.get_providers():
        return None, f"onnxruntime did not take the CUDAExecutionProvider (session providers {sess.get_providers()})"
    return sess, None


def _ort_runner(sess, x: torch.Tensor, target: str):
    """A zero-argument call running ``sess`` on ``x`` and returning its output as a torch tensor (CUDA:
    bound to torch's buffers, no host copies inside the timed call)."""
    import numpy as np

    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    if target == "llvm":
        feed = {inp.name: x.numpy()}
        return lambda: torch.from_numpy(sess.run(None, feed)[0])
    if x.dtype == torch.bfloat16:
        raise NotImplementedError("binding bf16 buffers to onnxruntime needs a numpy bf16 dtype")
    np_dtype = {torch.float16: np.float16, torch.float32: np.float32}[x.dtype]
    y = torch.empty_like(x)
    io = sess.io_binding()
    io.bind_input(inp.name, "cuda", x.device.index or 0, np_dtype, list(x.shape), x.data_ptr())
    io.bind_output(out.name, "cuda", x.device.index or 0, np_dtype, list(y.shape), y.data_ptr())

    def run():
        sess.run_with_iobinding(io)
        return y
    return run


def _flash_schedule_of_torch(model, dtype: str, device: str) -> str:
    from tvm_attn import kernels

    spec = kernels.KernelSpec("flash_fwd", model.head_dim, model.heads // model.kv_heads, dtype, True)
    return kernels.get(spec, torch.device(device)).schedule


def run(example: str = "llama-block", target: str = "llvm", batches: tuple[int, ...] | None = None,
        seq: int | None = None, dtype: str | None = None, out: Path | None = None, workdir: Path | None = None) -> dict:
    """Export, compile, check and time; returns the result (and writes it when ``out`` is given)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from tvm_attn.export import from_onnx


    device = "cuda" if target == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--target cuda needs a CUDA GPU on this machine")
    batches = tuple(batches or DEFAULTS[target]["batch"])
    seq = seq or DEFAULTS[target]["seq"]
    dtype = dtype or DEFAULTS[target]["dtype"]
    max_len = max(seq, EXPORT_SHAPE[1])
    sizes = SIZES[target]
    model = build(example, target, max_len, dtype, device)
    result: dict[str, Any] = {
        "provenance": provenance(device), "example": example, "target": target, "dtype": dtype,
        "model": {**sizes, "head_dim": model.head_dim, "max_len": max_len},
        "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "onnxruntime_providers": ort.get_available_providers()},
        "check_rule": "rel err ||y - y_torch||_2 / ||y_torch||_2 <= tol (torch eager, same model and dtype)",
        "rows": []}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / f"{example}.onnx"
        t0 = time.perf_counter()
        proto = export(model, path, sizes["dim"], max_len, dtype, device)
        result["export_s"] = time.perf_counter() - t0
        result["onnx_ops"] = sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in proto.graph.node})
        t0 = time.perf_counter()
        tvm_model = from_onnx(path, target=target)
        result["compile_s"] = time.perf_counter() - t0
        result["flash_schedule"] = {"tvm_onnx": tvm_model.schedules,
                                    "torch_op": _flash_schedule_of_torch(model, dtype, device)}
        sess, ort_missing = _ort_session(path, target)
        ort_name = "onnxruntime-cuda" if target == "cuda" else "onnxruntime-cpu"
        for b in batches:
            result["rows"].append(_point(model, tvm_model, sess, ort_missing, ort_name, b, seq, dtype, device,
                                         target))
            print(format_row(result["rows"][-1]), flush=True)
        del sess
    if out is not None:
        write(result, Path(out))
    return result


def _point(model, tvm_model, sess, ort_missing, ort_name, b, seq, dtype, device, target) -> dict:
    """One batch size: check every engine against torch eager, then time those that pass."""
    g = torch.Generator(device="cpu").manual_seed(b)
    x = torch.randn(b, seq, model.attn_norm.weight.shape[0], generator=g).to(device=device, dtype=getattr(torch, dtype))
    row: dict[str, Any] = {"B": b, "T": seq, "check": {}, "times_s": {}, "not_timed": {}}
    engines = {"tvm": lambda: tvm_model(x)}

    def eager():
        with torch.inference_mode():
            return model(x)
    want = eager()
    if sess is None:
        row["not_timed"][ort_name] = ort_missing
    else:
        try:
            engines[ort_name] = _ort_runner(sess, x, target)
        except (NotImplementedError, RuntimeError) as e:
            row["not_timed"][ort_name] = f"{type(e).__name__}: {e}"[:200]
    for name, fn in list(engines.items()):
        try:
            row["check"][name] = compare(fn(), want, dtype)
        except Exception as e:  # noqa: BLE001  (reported: the other engines still run)
            row["check"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
        if not row["check"][name]["ok"]:
            row["not_timed"][name] = "failed its check against torch eager"
            del engines[name]
    engines["torch-eager"] = eager
    for name, fn in engines.items():
        row["times_s"][name] = time_calls([fn], device)
    if "tvm" in row["times_s"]:
        t = row["times_s"]["tvm"]
        row["ratios"] = {n: s / t for n, s in row["times_s"].items() if n != "tvm"}
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------------------------------ reporting
def format_row(row: dict) -> str:
    times = ", ".join(f"{n} {s * 1e3:.3f} ms" for n, s in row["times_s"].items())
    errs = ", ".join(f"{n} {c['rel_err']:.1e}" if "rel_err" in c else f"{n} {c.get('error')}"
                     for n, c in row["check"].items())
    return f"B={row['B']} T={row['T']}: {times} | rel err vs torch: {errs}"


def markdown(result: dict) -> str:
    prov, m = result["provenance"], result["model"]
    lines = [f"# {result['example']} through ONNX -> TVM ({result['target']}, {result['dtype']})", "",
             f"Card: **{prov['card']['name']}** ({prov['device']}), {prov['date']}, torch {prov['torch']}, "
             f"TVM {prov['tvm']}, onnxruntime {result['versions']['onnxruntime']}, git {prov.get('git')}"
             f"{' (dirty)' if prov.get('git_dirty') else ''}.",
             f"Model: hidden {m['dim']}, {m['heads']} query / {m['kv_heads']} kv heads of {m['head_dim']}, "
             f"MLP {m['hidden']}; ONNX ops {', '.join(result['onnx_ops'])}; TVM compile {result['compile_s']:.1f} s.",
             "Flash kernel schedule: TVM from ONNX " + ", ".join(
                 f"{k} {v}" for k, v in result["flash_schedule"]["tvm_onnx"].items()) +
             f"; the torch op {result['flash_schedule']['torch_op']}.",
             f"Check: {result['check_rule']}; medians after warm-up; ratio = engine time / TVM time (> 1: TVM faster).",
             ""]
    names = sorted({n for r in result["rows"] for n in (*r["times_s"], *r["not_timed"])} - {"tvm"})
    lines += ["| B | T | TVM ms | " + " | ".join(names) + " | rel err (TVM; " + ", ".join(
                  n for n in names if n != "torch-eager") + ") |",
              "|---|---|---|" + "---|" * len(names) + "---|"]
    for r in result["rows"]:
        t = r["times_s"].get("tvm")
        cells = []
        for n in names:
            s = r["times_s"].get(n)
            cells.append("—" if s is None else (f"{s / t:.2f}× ({s * 1e3:.3f} ms)" if t else f"{s * 1e3:.3f} ms"))
        errs = "; ".join(f"{c['rel_err']:.1e}" if "rel_err" in c else "error" for c in r["check"].values())
        lines.append(f"| {r['B']} | {r['T']} | {'failed' if t is None else f'{t * 1e3:.3f}'} | "
                     + " | ".join(cells) + f" | {errs} |")
    missing = sorted({f"{n}: {why}" for r in result["rows"] for n, why in r["not_timed"].items()})
    if missing:
        lines += ["", "Not timed: " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> Path:
    """``<out>/<gpu-key>/onnx-<stamp>.json`` + ``.md`` on CUDA; ``<out>/onnx-<stamp>.*`` on llvm."""
    prov = result["provenance"]
    folder = out / prov["card"]["key"] if result["target"] == "cuda" else out
    folder.mkdir(parents=True, exist_ok=True)
    stamp = prov["date"].replace(":", "").replace("-", "")[:15]
    path = folder / f"onnx-{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {path}")
    return path


# ---------------------------------------------------------------------------------------- command line
def main(args) -> int:
    """``tvm-attn bench-onnx`` (arguments: tvm_attn/cli.py); exit 1 when the TVM model fails its check."""
    target = args.target or ("cuda" if torch.cuda.is_available() else "llvm")
    out = args.out or (REPO / "bench" / "results" if target == "cuda" else None)
    batches = tuple(int(b) for b in args.batch.split(",")) if args.batch else None
    result = run(args.example, target, batches, args.seq, args.dtype, Path(out) if out else None)
    return 0 if all(r["check"]["tvm"]["ok"] for r in result["rows"]) else 1


if __name__ == "__main__":  # python -m bench.onnx_block ...: the same as tvm-attn bench-onnx
    from tvm_attn.cli import main as cli_main

    raise SystemExit(cli_main(["bench-onnx", *__import__("sys").argv[1:]]))
