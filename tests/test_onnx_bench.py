"""``tvm-attn bench-onnx`` on the CPU (issue 5): the example block exported, compiled back through TVM
(llvm) on the flash schedule the torch op uses, checked against torch and onnxruntime, timed; JSON and
markdown written under --out."""
from __future__ import annotations

import json
from pathlib import Path

from tvm_attn import cli


def test_bench_onnx_llvm_writes_checked_timings(tmp_path: Path):
    out = tmp_path / "results"
    assert cli.main(["bench-onnx", "--target", "llvm", "--batch", "1", "--seq", "24", "--out", str(out)]) == 0
    (path,) = out.glob("onnx-*.json")
    result = json.loads(path.read_text())
    for key in ("date", "torch", "tvm", "card", "git"):
        assert key in result["provenance"]
    assert result["target"] == "llvm" and result["dtype"] == "float32" and "Attention" in result["onnx_ops"]
    # the kernel inside the TVM model is the one kernels.get gives the torch op
    (schedule,) = result["flash_schedule"]["tvm_onnx"].values()
    assert schedule == result["flash_schedule"]["torch_op"]
    (row,) = result["rows"]
    assert (row["B"], row["T"]) == (1, 24)
    for engine in ("tvm", "onnxruntime-cpu"):
        check = row["check"][engine]
        assert check["ok"] and check["rel_err"] <= check["tol"] == 1e-4 and check["max_abs_err"] >= 0
    assert set(row["times_s"]) == {"tvm", "onnxruntime-cpu", "torch-eager"}
    assert all(t > 0 for t in row["times_s"].values())
    assert row["ratios"]["torch-eager"] == row["times_s"]["torch-eager"] / row["times_s"]["tvm"]
    md = path.with_suffix(".md").read_text()
    assert "| 1 | 24 |" in md and "torch-eager" in md


def test_from_onnx_takes_the_kernel_decision_of_the_torch_ops(monkeypatch):
    """On CUDA the converter asks tune.dispatch for this card's record, as kernels.get does: a record it
    accepts is replayed (schedule "tuned_<id>"), none gives the default decision; no GPU needed here."""
    from types import SimpleNamespace

    from tvm_attn import kernels
    from tvm_attn.export import onnx_tvm
    from tvm_attn.tune import dispatch, tasks

    spec = kernels.KernelSpec("flash_fwd", 128, 4, "float16", True)
    tgt = kernels.DeviceTarget("cuda", "sm_90a", "h200")
    monkeypatch.setattr(kernels, "device_target", lambda device: tgt)
    looked_up = []
    fake_sch = SimpleNamespace(mod={"main": "scheduled func"})
    best = SimpleNamespace(variant_key="m128n64", trace="trace", record_id="abc")
    monkeypatch.setattr(dispatch, "lookup", lambda s, t: looked_up.append((s, t)) or best)
    monkeypatch.setattr(tasks, "variant_from_key", lambda s, device, key: ("variant", key))
    monkeypatch.setattr(tasks, "replay", lambda s, device, variant, trace: fake_sch)
    assert onnx_tvm._scheduled(spec, "cuda") == ("scheduled func", "tuned_abc")
    assert looked_up == [(spec, tgt)] and kernels.tuned_plan(spec, tgt, best).name == "tuned_abc"
    monkeypatch.setattr(dispatch, "lookup", lambda s, t: None)
    monkeypatch.setattr(kernels, "cuda_schedule", lambda s, variant: fake_sch)
    assert onnx_tvm._scheduled(spec, "cuda") == ("scheduled func", kernels.default_plan(spec, tgt).name)


def test_bench_onnx_llvm_float16_matches_torch(tmp_path: Path):
    """The fp16 block on llvm (tiny dims): TVM's output is finite and within the fp16 tolerance of torch
    eager; the norms reach the ONNX graph in fp32 (no fp16 ReduceMean for TVM to accumulate in fp16)."""
    out = tmp_path / "results"
    assert cli.main(["bench-onnx", "--target", "llvm", "--batch", "1", "--seq", "24", "--dtype", "float16",
                     "--out", str(out)]) == 0
    (path,) = out.glob("onnx-*.json")
    result = json.loads(path.read_text())
    assert result["dtype"] == "float16" and "Attention" in result["onnx_ops"]
    assert "ReduceMean" not in result["onnx_ops"], result["onnx_ops"]
    (row,) = result["rows"]
    check = row["check"]["tvm"]
    assert check["ok"] and check["tol"] == 1e-2 and 0 <= check["rel_err"] <= 1e-2, check
    assert "tvm" in row["times_s"]
