"""Tuning of the linear-attention split kernels without a GPU: their MetaSchedule tasks and spaces, a record
(written the way the tuner writes one, from a sampled trace) found, replayed and compiled for sm_90a by
the tuned dispatch, refused when stale or slower than the default, and the CLI around it."""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pytest

from tvm_attn import _tvm
from tvm_attn.kernels import DeviceTarget
from tvm_attn.ops.linear.build import LinearSpec
from tvm_attn.tune import dispatch, linear_tasks as L, records

SPEC = LinearSpec("simple_gla", "chunk", 128, 128, "bfloat16", False, 64, "output")
TGT = DeviceTarget("cuda", "sm_90a", "testcard")


def _private_schedule(task):
    """A schedule of the task's workload on its own deserialised copy, as the tuner's search samples one
    (TVM 0.27's schedule copy-on-write would otherwise change the task in place)."""
    return _tvm.Schedule(_tvm.tvm.ir.load_json(_tvm.tvm.ir.save_json(_tvm.tvm.IRModule({"main": task.func}))))


def _write_record(root: Path, spec: LinearSpec, task, *, best_s: float, default_s: float) -> Path:
    """Sample the task's space on a private copy of its workload (as the tuner's search does: TVM 0.27's
    schedule copy-on-write would otherwise change the task in place), commit it through MetaSchedule's
    JSON database and append its lines to the records folder with a provenance, as ``tune`` does."""
    ms = _tvm.ms
    workload = _tvm.tvm.IRModule({"main": task.func})
    sch = _private_schedule(task)
    task.space(sch)
    scratch = root / "scratch"
    scratch.mkdir(exist_ok=True)
    db = ms.database.JSONDatabase(path_workload=str(scratch / records.DB_FILES[0]),
                                  path_tuning_record=str(scratch / records.DB_FILES[1]), allow_missing=True)
    wl = db.commit_workload(workload)
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, wl, [_tvm.tvm.runtime.convert(best_s)], _tvm.cuda_target("sm_90a"),
        ms.arg_info.ArgInfo.from_prim_func(task.func)))
    folder = root / TGT.card / spec.key
    folder.mkdir(parents=True)
    wls = [json.loads(line) for line in (scratch / records.DB_FILES[0]).read_text().splitlines()]
    for line in (scratch / records.DB_FILES[1]).read_text().splitlines():
        idx, rec = json.loads(line)
        records.append_record(folder, wls[idx], rec)
    shape = L.representative_shape(spec, "cuda")
    prov = {"spec": spec.key, "op": spec.op, "gpu": TGT.card, "device": "cuda", "tvm": _tvm.TVM_VERSION,
            "target": {"kind": "cuda", "arch": "sm_90a"}, "representative_shape": shape,
            "scale": L.scale_of(spec), "trials": 1, "workloads": {task.variant.key: task.workload_hash()},
            "best": {"variant": task.variant.key, "run_secs": best_s, "measured_s": best_s, "record": "r1"},
            "default": {"variant": L.default_key(spec, "cuda"), "measured_s": default_s}}
    records.write_atomic(folder / "provenance.json", json.dumps(prov))
    return folder


@pytest.fixture
def user_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TVM_ATTN_TUNING_DIR", str(tmp_path))
    monkeypatch.setattr(dispatch, "_warned", set())
    return tmp_path


def test_tasks_of_the_split_kernels():
    for spec in (SPEC, LinearSpec("simple_gla", "chunk", 128, 128, "bfloat16", False, 64, "state"),
                 LinearSpec("simple_gla", "chunk", 128, 128, "bfloat16", False, 64, "state", "many"),
                 LinearSpec("gated_delta_rule", "chunk", 128, 128, "float16", False, 64, "prep"),
                 LinearSpec("gated_delta_rule", "chunk", 128, 128, "float16", False, 64, "state"),
                 LinearSpec("gated_delta_rule", "chunk", 128, 128, "float16", False, 64, "state", "v64"),
                 LinearSpec("gla", "chunk", 128, 128, "bfloat16", False, 64, "state"),
                 LinearSpec("simple_gla", "chunk", 128, 128, "bfloat16", False, 64, "fused"),
                 LinearSpec("gated_delta_rule", "chunk", 128, 128, "float16", False, 64, "fused")):
        shape = L.representative_shape(spec, "cuda")
        tasks = L.tasks(spec, "cuda", shape)
        keys = [t.variant.key for t in tasks]
        assert keys[0] == L.default_key(spec, "cuda") and len(set(keys)) == len(keys), keys
        assert len({t.workload_hash() for t in tasks}) == len(tasks)  # each variant its own workload
        assert shape["NTt"] == shape["B"] * -(-shape["T"] // spec.chunk) and shape["N0"] == shape["B"]
        assert L.spec_from_key(spec.key) == spec
        assert L.flops(spec, shape) > 0
    many = LinearSpec("linear_attention", "chunk", 128, 128, "bfloat16", False, 64, "state", "many")
    assert L.representative_shape(many, "cuda")["B"] == 8  # the shape class of the large tiles
    fused = LinearSpec("delta_rule", "chunk", 128, 128, "bfloat16", False, 64, "fused")
    assert (L.representative_shape(fused, "cuda")["B"], L.default_key(fused, "cuda")) == (8, "bv64w4u0s1")
    v32 = LinearSpec("delta_rule", "chunk", 128, 128, "bfloat16", False, 64, "state", "v32")
    assert (L.representative_shape(v32, "cuda")["B"], L.default_key(v32, "cuda")) == (2, "bv32w2u0s2")
    with pytest.raises(ValueError, match="CUDA only"):
        L.tasks(SPEC, "cpu", {})
    with pytest.raises(ValueError, match="dense split"):
        L.tasks(LinearSpec("simple_gla", "chunk", 64, 64, "float16", True, 64, "state"), "cuda",
                {"B": 1, "T": 64, "H": 1, "NTt": 1})


def test_tuned_record_is_replayed_and_compiled(user_root):
    from tvm_attn.ops.linear.cuda import cuda_plan

    task = L.tasks(SPEC, "cuda", L.representative_shape(SPEC, "cuda"))[1]  # not the default's tiles
    _write_record(user_root, SPEC, task, best_s=1e-4, default_s=2e-4)
    best = dispatch.lookup(SPEC, TGT)
    assert best is not None and best.variant_key == task.variant.key
    plan = cuda_plan(SPEC, TGT)
    assert plan.name == "tuned_r1"
    src = _tvm.cuda_source(plan.build())  # the trace replayed on the symbolic (any-length) function
    sch = L.replay(SPEC, "cuda", task.variant, best.trace)
    warps = [int(d[0]) for i, d in sch.trace.decisions.items() if i.kind.name == "SamplePerfectTile"][0]
    assert f"__launch_bounds__({32 * warps})" in src and "mma.sync.aligned.m16n8k16" in src
    assert "int T" in src  # lengths stay symbolic
    # the tuner's builder compiles a concrete candidate (sampled on a private copy, as the search does)
    private = _private_schedule(task)
    task.space(private)
    built = L.ms_build_cuda(private.mod, _tvm.cuda_target("sm_90a"), None)
    assert "mma.sync" in built.imports[0].inspect_source()


def test_slower_or_stale_record_is_not_applied(user_root):
    task = L.tasks(SPEC, "cuda", L.representative_shape(SPEC, "cuda"))[1]
    folder = _write_record(user_root, SPEC, task, best_s=3e-4, default_s=2e-4)
    assert dispatch.lookup(SPEC, TGT) is None  # slower than the default in its own run
    prov = json.loads((folder / "provenance.json").read_text())
    prov["best"]["measured_s"] = 1e-4
    prov["workloads"][task.variant.key] = "0x0123456789abcdef"
    records.write_atomic(folder / "provenance.json", json.dumps(prov))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.lookup(SPEC, TGT) is None
    assert any("stale" in str(w.message) and "changed" in str(w.message) for w in caught)


def test_missing_records_warn_once_per_op(user_root):
    state = LinearSpec("simple_gla", "chunk", 128, 128, "bfloat16", False, 64, "state")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.lookup(state, TGT) is None and dispatch.lookup(SPEC, TGT) is None
    msgs = [str(w.message) for w in caught if "no tuned record" in str(w.message)]
    assert len(msgs) == 1 and "tvm-attn tune --op simple_gla --head-dim 128 --dtype bfloat16 --chunk 64" in msgs[0]


def test_cli_linear_ops(user_root, capsys):
    from tvm_attn.tune import cli

    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["tune", "--op", "gated_delta_rule", "--device", "cpu"])
    with pytest.raises(SystemExit, match="tuned on CUDA only"):
        args.func(args)
    args = parser.parse_args(["tune", "--op", "simple_gla", "--dtype", "float16", "--chunk", "128"])
    keys = [s.key for s in cli._specs(args)]
    assert keys == ["linear_simple_gla_chunk_state_k128_v128_float16_c128_dense",
                    "linear_simple_gla_chunk_state_many_k128_v128_float16_c128_dense",
                    "linear_simple_gla_chunk_state_mid_k128_v128_float16_c128_dense",
                    "linear_simple_gla_chunk_output_k128_v128_float16_c128_dense",
                    "linear_simple_gla_chunk_fused_k128_v128_float16_c128_dense"]
    args = parser.parse_args(["tune", "--op", "gated_delta_rule", "--part", "state"])
    assert [s.tiles for s in cli._specs(args)] == ["", "v32", "v64"]  # a record per shape class
    args = parser.parse_args(["tune", "--op", "gated_delta_rule", "--tiling", "v64"])
    assert [(s.part, s.tiles) for s in cli._specs(args)] == [("prep", ""), ("state", "v64"), ("output", ""),
                                                             ("fused", "")]
    args = parser.parse_args(["tune", "--op", "simple_gla", "--part", "state", "--tiling", "default"])
    assert [s.tiles for s in cli._specs(args)] == [""]
    with pytest.raises(SystemExit, match="tilings are default, many"):
        cli._specs(parser.parse_args(["tune", "--op", "simple_gla", "--tiling", "v64"]))
    task = L.tasks(SPEC, "cuda", L.representative_shape(SPEC, "cuda"))[0]
    _write_record(user_root, SPEC, task, best_s=1e-4, default_s=2e-4)
    args = parser.parse_args(["show", f"{TGT.card}/{SPEC.key}"])
    args.func(args)
    out = capsys.readouterr().out
    assert "sample_perfect_tile" in out and "tuned 0.100 ms" in out


def test_tune_end_to_end_with_a_stand_in_runner(tmp_path, monkeypatch):
    # `tune` on a linear kernel as it runs on a GPU, with the measurements stood in (no GPU here): the
    # search samples and mutates the kernel's space on private copies, the builder workers compile every
    # candidate for sm_90a, and the records, provenance and plot are written; the record then dispatches
    from tvm_attn.ops.linear.cuda import cuda_plan
    from tvm_attn.tune import run

    ms = _tvm.ms
    built = []

    @_tvm.derived_object
    class StandIn(ms.runner.PyRunner):
        def run(self, runner_inputs):
            out = []
            for n, inp in enumerate(runner_inputs):
                built.append(inp.artifact_path)
                secs = [1e-4 * (1 + n)]
                out.append(ms.runner.RunnerFuture(lambda: True, lambda s=secs: ms.runner.RunnerResult(s, None)))
            return out

    monkeypatch.setattr(run, "_runner", lambda device, rpc: StandIn())
    monkeypatch.setattr(run, "measure_default_and_tuned", lambda *a: (2e-4, 1e-4))
    monkeypatch.setattr(run, "_card", lambda device: {"card": "stand-in"})
    monkeypatch.setenv("TVM_ATTN_TUNING_DIR", str(tmp_path))
    monkeypatch.setattr(dispatch, "_warned", set())
    result = run.tune(SPEC, device="cuda", gpu=TGT.card, arch="sm_90a", trials=4, out_root=tmp_path, workers=2)
    assert len(built) == 4 and all(built)  # every candidate compiled
    prov = json.loads((result.folder / "provenance.json").read_text())
    assert prov["trials"] == 4 and set(prov["workloads"]) == {t.variant.key for t in L.tasks(
        SPEC, "cuda", L.representative_shape(SPEC, "cuda"))}
    assert (result.folder / "tuning.png").stat().st_size > 0
    assert cuda_plan(SPEC, TGT).name.startswith("tuned_")


def test_a_run_killed_in_its_first_round_keeps_the_measured_batches(tmp_path, monkeypatch):
    # each measured batch is persisted before the next is sent, also while not every task has had its
    # first batch (the gradient task scheduler joined none of them until then: a run killed in its first
    # round, a variant space's 2-11 tasks, lost every measurement); the run dies in the runner's second
    # batch, after the first batch's records reached the folder
    from tvm_attn.tune import run

    ms = _tvm.ms
    assert len(L.tasks(SPEC, "cuda", L.representative_shape(SPEC, "cuda"))) >= 2
    calls = []

    @_tvm.derived_object
    class DiesOnItsSecondBatch(ms.runner.PyRunner):
        def run(self, runner_inputs):
            calls.append(len(runner_inputs))
            if len(calls) == 2:
                raise KeyboardInterrupt("killed")
            return [ms.runner.RunnerFuture(lambda: True, lambda: ms.runner.RunnerResult([1e-4], None))
                    for _ in runner_inputs]

    monkeypatch.setattr(run, "_runner", lambda device, rpc: DiesOnItsSecondBatch())
    monkeypatch.setenv("TVM_ATTN_TUNING_DIR", str(tmp_path))
    with pytest.raises(BaseException, match="killed"):
        run.tune(SPEC, device="cuda", gpu=TGT.card, arch="sm_90a", trials=6, out_root=tmp_path, workers=2)
    folder = tmp_path / TGT.card / SPEC.key
    assert len(calls) == 2 and len(records.read_records(folder)) == calls[0] > 0


@pytest.mark.parametrize("spec", [
    LinearSpec("gated_delta_rule", "chunk", 128, 128, "bfloat16", False, 64, "state", "v64"),
    LinearSpec("gated_delta_rule", "chunk", 128, 128, "bfloat16", False, 64, "state"),
    LinearSpec("simple_gla", "chunk", 128, 128, "bfloat16", False, 64, "state", "many"),
    LinearSpec("gla", "chunk", 128, 128, "bfloat16", False, 64, "state")], ids=lambda s: s.key)
def test_tuning_candidates_keep_their_chunk_loop(spec):
    # a tuning candidate is specialised to the representative shape, so its chunk loop has a constant trip
    # count; the pipelined kernels' cp.async drain unrolling once wrote every chunk out (200k lines of
    # CUDA for 32 chunks, and nvcc never finished): the candidate must be the symbolic kernel's code with
    # the chunk count filled in
    from tvm_attn.ops.linear.cuda import build_config, cuda_schedule
    from tvm_attn.schedules.linear import apply_cuda_chunk_part

    task = L.tasks(spec, "cuda", L.representative_shape(spec, "cuda"))[0]  # the default's tiles
    sch = _private_schedule(task)
    apply_cuda_chunk_part(sch, spec.part, task.variant, spec.dtype)  # the default decision
    src = L.ms_build_cuda(sch.mod, _tvm.cuda_target("sm_90a"), None).imports[0].inspect_source()
    symbolic = _tvm.cuda_source(_tvm.compile_module(cuda_schedule(spec).mod, _tvm.cuda_target("sm_90a"),
                                                    build_config()))
    n_chunks = -(-L.representative_shape(spec, "cuda")["T"] // spec.chunk)
    assert f"for (int c = 0; c < {n_chunks - task.variant.stages}; ++c)" in src
    assert src.count("mma.sync") == symbolic.count("mma.sync")
    assert src.count("\n") < 1.3 * symbolic.count("\n")
    if spec.tiles == "v64":
        assert _tvm.compile_cuda_source(src, "sm_90a", "fatbin")  # and nvcc compiles it



def test_fused_warp_counts_compile():
    # the fused state and output kernel's warp knob (a perfect tiling of its 16-row value tiles, whose
    # count the chunk tiles' shares): 2 and 4 warps build for sm_90a, for both state rules
    import dataclasses

    from tvm_attn.ops.linear.cuda import build_cuda
    from tvm_attn.schedules.linear import default_split_variant

    for op in ("simple_gla", "gated_delta_rule"):
        spec = LinearSpec(op, "chunk", 128, 128, "bfloat16", False, 64, "fused")
        default = default_split_variant("fused", spec.static.rule, spec.static.gate)
        for w in (2, 4):
            src = _tvm.cuda_source(build_cuda(spec, "sm_90a", dataclasses.replace(default, warps=w)))
            assert f"__launch_bounds__({32 * w})" in src and "mma.sync.aligned.m16n8k16" in src, (op, w)
