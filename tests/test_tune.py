"""Tuning on the LLVM target end to end (CLI, records, provenance, resume after a kill), the RPC
tracker path on loopback, shipped records against the current compute, and tuned dispatch."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from tvm_attn import _tvm, kernels
from tvm_attn.kernels import DeviceTarget, KernelSpec
from tvm_attn.tune import dispatch, records
from tvm_attn.tune.search import PrivateCopyEvolutionarySearch

SPEC = KernelSpec("flash_fwd", 64, 2, "float32", True)
CLI = [sys.executable, "-m", "tvm_attn.cli"]


def _tune(out: Path, trials: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*CLI, "tune", "--device", "cpu", "--head-dim", "64", "--group", "2", "--dtype", "float32",
           "--causal", "yes", "--trials", str(trials), "--workers", "2", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("records")
    r = _tune(out, 4)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "default ms" in r.stdout and "trials" in r.stdout  # summary table and progress lines
    return out


def test_cli_tuning_writes_records_with_provenance(tuned):
    folder = tuned / "cpu" / SPEC.key
    prov = json.loads((folder / "provenance.json").read_text())
    for key in ("tvm", "target", "workloads", "card", "date", "trials", "best", "default", "representative_shape"):
        assert key in prov, key
    assert prov["trials"] == 4
    assert prov["best"]["measured_s"] > 0 and prov["default"]["measured_s"] > 0
    assert len(records.read_records(folder)) >= 1
    assert (folder / "tuning.png").stat().st_size > 0


def test_resume_after_a_kill_keeps_every_finished_record(tuned, tmp_path):
    folder = tmp_path / "cpu" / SPEC.key
    shutil.copytree(tuned / "cpu" / SPEC.key, folder)
    rec_file = folder / records.DB_FILES[1]
    finished = rec_file.read_text().splitlines()
    # a kill in the middle of writing a record leaves half a line behind
    rec_file.write_text("\n".join(finished) + "\n" + finished[-1][: len(finished[-1]) // 2])
    r = _tune(tmp_path, 6, "--resume")
    assert r.returncode == 0, r.stderr[-4000:]
    lines = rec_file.read_text().splitlines()
    assert lines[: len(finished)] == finished
    assert len(lines) == 6 and all(json.loads(line) for line in lines)
    assert "half-written" in r.stdout


def test_refuses_to_mix_runs_without_resume(tuned):
    r = _tune(tuned, 4)
    assert r.returncode != 0 and "--resume" in r.stderr


def _with_times(src: Path, dst_root: Path, best_s: float, default_s: float) -> Path:
    folder = dst_root / "cpu" / SPEC.key
    shutil.copytree(src / "cpu" / SPEC.key, folder)
    prov = json.loads((folder / "provenance.json").read_text())
    prov["best"]["measured_s"], prov["default"]["measured_s"] = best_s, default_s
    (folder / "provenance.json").write_text(json.dumps(prov))
    return folder


def test_record_slower_than_the_default_is_not_applied(tuned, tmp_path, monkeypatch):
    _with_times(tuned, tmp_path, 2e-3, 1e-3)
    monkeypatch.setenv("TVM_ATTN_TUNING_DIR", str(tmp_path))
    assert dispatch.lookup(SPEC, DeviceTarget("cpu")) is None


def test_tuned_record_is_dispatched_and_correct(tuned, tmp_path, monkeypatch):
    _with_times(tuned, tmp_path, 1e-3, 2e-3)  # whichever won this short CPU run, dispatch the record
    monkeypatch.setenv("TVM_ATTN_TUNING_DIR", str(tmp_path))
    best = dispatch.lookup(SPEC, DeviceTarget("cpu"))
    assert best is not None and best.record_id.startswith(best.variant_key)
    ex = dispatch.build_tuned(SPEC, DeviceTarget("cpu"), best)
    q, k, v = torch.randn(1, 77, 4, 64), torch.randn(1, 130, 2, 64), torch.randn(1, 130, 2, 64)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((1, 4, 77), float("nan"))
    ex["main"](q, k, v, out, lse, 0.125)
    from tvm_attn.ops.flash.reference import attention_ref

    ref, _ = attention_ref(q, k, v, causal=True, softmax_scale=0.125)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_stale_record_is_ignored_with_a_warning(tuned, tmp_path, monkeypatch):
    folder = tmp_path / "cpu" / SPEC.key
    shutil.copytree(tuned / "cpu" / SPEC.key, folder)
    prov = json.loads((folder / "provenance.json").read_text())
    prov["workloads"] = {k: "0xdeadbeef" for k in prov["workloads"]}  # as if the compute had changed
    (folder / "provenance.json").write_text(json.dumps(prov))
    monkeypatch.setenv("TVM_ATTN_TUNING_DIR", str(tmp_path))
    dispatch._warned.clear()
    with pytest.warns(UserWarning, match="stale"):
        assert dispatch.lookup(SPEC, DeviceTarget("cpu")) is None


def test_missing_record_uses_the_default_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_ATTN_TUNING_DIR", str(tmp_path))
    dispatch._warned.clear()
    spec = KernelSpec("flash_fwd", 64, 1, "bfloat16", True)
    gpu = DeviceTarget("cuda", "sm_90a", "no-such-card")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.lookup(spec, gpu) is None
        assert dispatch.lookup(spec, gpu) is None
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "tvm-attn tune" in msgs[0]
    assert kernels.default_plan(spec, gpu).name.startswith("default_")


def test_hot_path_does_not_look_records_up_again(monkeypatch):
    calls = []
    real = dispatch.lookup
    monkeypatch.setattr(dispatch, "lookup", lambda *a: calls.append(a) or real(*a))
    spec = KernelSpec("flash_fwd", 64, 1, "float32", False)
    kernels._by_spec.pop((spec, DeviceTarget("cpu")), None)
    for _ in range(3):
        kernels.get(spec, torch.device("cpu"))
    assert len(calls) == 1


def _shipped() -> list[records.RecordDir]:
    return [r for r in records.listing() if r.path.is_relative_to(records.shipped_root())]


@pytest.mark.skipif(not _shipped(), reason="no shipped tuning records")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("rec", _shipped(), ids=lambda r: f"{r.gpu}/{r.spec}")
def test_shipped_record_matches_the_compute_and_compiles(rec, monkeypatch):
    from tvm_attn import _tvm

    from tvm_attn.tune import tasks

    prov = rec.provenance
    spec = tasks.family_of_key(rec.spec).spec_from_key(rec.spec)  # flash or a linear split kernel
    assert spec.key == rec.spec
    tgt = DeviceTarget(prov["device"], records.target_arch(prov) if prov["device"] == "cuda" else None, rec.gpu)
    best = dispatch.load_best(spec, tgt, rec)  # raises StaleRecord when the workload hash moved
    ex = dispatch.build_tuned(spec, tgt, best)
    if prov["device"] == "cuda":
        src = _tvm.cuda_source(ex)
        assert "mma.sync" in src and "ldmatrix" in src
        assert _tvm.compile_cuda_source(src, tgt.arch, "cubin")[:4] == b"\x7fELF"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_tracker_on_loopback(tmp_path):
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(port), "--port-end", str(port + 1)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        from tvm_attn._tvm import tvm

        deadline = time.time() + 120
        while True:  # the tracker is up once it answers
            try:
                tvm.rpc.connect_tracker("127.0.0.1", port).summary()
                break
            except (RuntimeError, OSError):
                assert time.time() < deadline, "the RPC tracker did not start"
                time.sleep(1)
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker",
                                   f"127.0.0.1:{port}", "--key", "cpu-test", "--host", "127.0.0.1"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while "cpu-test" not in str(tvm.rpc.connect_tracker("127.0.0.1", port).summary().get("server_info")):
            assert time.time() < deadline, "the RPC server did not register with the tracker"
            time.sleep(1)
        r = _tune(tmp_path, 2, "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "cpu-test")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        measured = records.read_records(tmp_path / "cpu" / SPEC.key)
        assert measured and all(m.run_s > 0 for m in measured)
    finally:
        for p in (server, tracker):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)


def test_show_prints_a_shipped_record(capsys):
    # `tvm-attn show` replays a shipped flash record's trace and prints its decisions and speeds
    import argparse

    from tvm_attn.tune import cli

    rec = next(r for r in records.listing() if r.spec.startswith("flash_fwd"))
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["show", f"{rec.gpu}/{rec.spec}"])
    args.func(args)
    out = capsys.readouterr().out
    assert "sample_perfect_tile" in out and "default " in out and "tuning.png" in out


def test_search_stops_sampling_a_small_space_once_it_is_exhausted():
    # a split linear kernel's space is a few warp counts: the search must not schedule the kernel 4x a
    # population per batch looking for candidates that do not exist, and the task ends once all are measured
    _tvm.import_tensor_intrin()  # (TuneContext imports the tensor intrinsics; this import is the fast one)
    te = _tvm.tvm.te
    a = te.placeholder((8,), "float32", name="A")
    b = te.compute((8,), lambda i: a[i] * 2.0, name="B")
    mod = _tvm.tvm.IRModule({"main": te.create_prim_func([a, b])})
    calls = []

    def space(sch):
        calls.append(1)
        sch.sample_categorical([1, 2, 4], [1 / 3] * 3)

    s = PrivateCopyEvolutionarySearch(space, [], population=16, init_random=8, stale_limit=5, seed=3)
    s._initialize_with_tune_context(_tvm.ms.TuneContext(mod=mod, target=_tvm.cpu_target()))
    s.pre_tuning(100, 16, [], database=None, cost_model=None)
    first = s.generate_measure_candidates()
    decisions = sorted(int(d) for c in first for d in c.sch.trace.decisions.values())
    assert decisions == [0, 1, 2]  # every point of the space, once
    assert len(calls) < 4 * 16  # stopped after 5 samples in a row with nothing new
    s.notify_runner_results(first, [_tvm.ms.runner.RunnerResult([1e-4], None) for _ in first])
    calls.clear()
    assert s.generate_measure_candidates() is None and len(calls) == 5  # nothing left: the task ends
