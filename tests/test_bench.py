"""The benchmark driver on the CPU: registry shapes, exact counts, the correctness gate (a deliberately
wrong op gets no timing), baselines in the same run, results with provenance and reports."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import replace

import pytest
import torch

from tvm_attn import registry
from tvm_attn.bench import baselines, driver, report
from tvm_attn.ops.flash import visible_pairs

TINY = {"B": 1, "Tq": 48, "Tk": 80, "Hq": 4, "Hkv": 2, "D": 64, "causal": True}


def test_exact_flop_and_byte_counts():
    e = registry.get("flash_fwd")
    pairs = sum(min(80, max(0, i + 80 - 48 + 1)) for i in range(48))
    assert visible_pairs(48, 80, True) == pairs
    assert e.flops(TINY) == 4 * pairs * 4 * 64
    # q, k, v read once, out and lse written once (fp16: 2 bytes, lse fp32)
    assert e.bytes(TINY, "float16") == 2 * 64 * (2 * 48 * 4 + 2 * 80 * 2) + 4 * 48 * 4


def test_driver_times_a_correct_op_against_its_baselines():
    e = registry.get("flash_fwd")
    row = driver.bench_point(e, TINY, "float32", "cpu", ["sdpa-math", "sdpa-flash", "flex"], driver.L2_DEFAULT)
    assert row["check"]["ok"], row["check"]
    assert row["ours_s"] > 0 and row["schedule"]
    # SDPA aligns causal masks to the top-left: with Tq != Tk it is reported as not comparable, not dropped
    assert "missing" in row["baselines"]["sdpa-math"] and "top-left" in row["baselines"]["sdpa-math"]["missing"]
    assert "missing" in row["baselines"]["flex"]
    square = dict(TINY, Tq=80)
    row = driver.bench_point(e, square, "float32", "cpu", ["sdpa-math"], driver.L2_DEFAULT)
    assert row["baselines"]["sdpa-math"]["s"] > 0


def forgot_the_scale(q, k, v, *, causal=False, softmax_scale=None):
    """A deliberately wrong op: flash attention that ignores the softmax scale."""
    return registry.get("flash_fwd").function()(q, k, v, causal=causal, softmax_scale=1.0)


def test_gate_refuses_a_wrong_op():
    bad = replace(registry.get("flash_fwd"), name="flash_fwd_wrong", api=f"{__name__}:forgot_the_scale")
    row = driver.bench_point(bad, TINY, "float32", "cpu", ["sdpa-math"], driver.L2_DEFAULT)
    assert row["check"]["ok"] is False and row["check"]["max_err"] > row["check"]["bound"]
    assert "ours_s" not in row and "baselines" not in row
    assert "FAILED check" in driver.format_row(row, {})


def test_cli_writes_json_markdown_and_png(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps({"flash_fwd": [dict(TINY, Tq=80)]}))
    r = subprocess.run([sys.executable, "-m", "bench", "--op", "flash_fwd", "--shapes", str(shapes),
                        "--out", str(tmp_path / "results")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "results" / "cpu").glob("bench-*.json")
    result = json.loads(run.read_text())
    prov = result["provenance"]
    for key in ("date", "torch", "tvm", "tvm_ffi", "git", "card", "device"):
        assert key in prov
    assert result["ceilings"]["gemm_fp32_1024_TFLOPs"] > 0
    assert result["rows"][0]["check"]["ok"] and "sdpa-math" in result["rows"][0]["baselines"]
    assert result["complete"] is True and not list(run.parent.glob("*.tmp"))
    assert "| flash_fwd |" in run.with_suffix(".md").read_text()
    assert run.with_suffix(".png").stat().st_size > 0
    assert "flash_fwd" in report.markdown(result)


def test_a_killed_run_keeps_its_finished_points(tmp_path, monkeypatch):
    # the JSON is rewritten after every point: a run stopped by a timeout keeps what it measured
    real, calls = driver.bench_point, []

    def point_then_killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a timeout's signal does to the second point
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "bench_point", point_then_killed)
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps({"flash_fwd": [TINY, dict(TINY, Tq=80)]}))
    with pytest.raises(KeyboardInterrupt):
        driver.run(["flash_fwd"], str(shapes), ["sdpa-math"], out=tmp_path / "results", device="cpu")
    (run,) = (tmp_path / "results" / "cpu").glob("bench-*.json")
    result = json.loads(run.read_text())
    assert result["complete"] is False and len(result["rows"]) == 1 and result["rows"][0]["check"]["ok"]
    assert "stopped before its last point" in report.markdown(result)


def test_readme_section_is_generated(tmp_path):
    results = tmp_path / "results" / "h100"
    results.mkdir(parents=True)
    fake_run = {"provenance": {"card": {"name": "Card", "key": "h100"}, "device": "cuda", "date": "d",
                               "torch": "t", "tvm": "v", "git": "g"},
                "ceilings": {"copy_TBps": 3.0}, "rows": []}
    (results / "bench-20260101T000000.json").write_text(json.dumps(fake_run))
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{report.README_START}\nold\n{report.README_END}\ntail\n")
    report.update_readme(tmp_path / "results", readme)
    text = readme.read_text()
    assert "old" not in text and "### h100" in text and text.startswith("head") and text.endswith("tail\n")


def test_readme_shows_each_ops_newest_run(tmp_path):
    results = tmp_path / "results" / "h200"
    results.mkdir(parents=True)
    prov = {"card": {"name": "Card", "key": "h200"}, "device": "cuda", "date": "d", "torch": "t", "tvm": "v",
            "git": "g"}

    def row(op, ms):
        return {"op": op, "shape": {"B": 1, "T": 64}, "dtype": "bfloat16", "flops": 1, "bytes": 1, "check": {"ok": True},
                "ours_s": ms / 1e3, "baselines": {}}

    runs = {"bench-20260101T000000.json": [row("flash_fwd", 1.5), row("simple_gla", 9.0)],
            "bench-20260102T000000.json": [row("simple_gla", 1.25)]}
    for name, rows in runs.items():
        (results / name).write_text(json.dumps({"provenance": prov, "ceilings": {}, "rows": rows}))
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.README_START}\n{report.README_END}\n")
    report.update_readme(tmp_path / "results", readme)
    text = readme.read_text()
    # flash_fwd from the older run (its newest), simple_gla only from the newer one
    assert "bench-20260101T000000.json" in text and "bench-20260102T000000.json" in text
    assert "| flash_fwd |" in text and "1.250" in text and "9.000" not in text


def test_demo_command_checks_every_op():
    r = subprocess.run([sys.executable, "-m", "tvm_attn.cli", "demo", "--device", "cpu"], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all ops match the reference" in r.stdout
    for e in registry.all_ops():
        assert e.name in r.stdout


# ------------------------------------------------------------------------------------- fla baselines
LINEAR_CHUNK = {"B": 2, "T": 100, "H": 2, "K": 64, "V": 64, "form": "chunk", "chunk_size": 64}
FLA_NAMES = {"linear_attention": "chunk_linear_attn", "simple_gla": "chunk_simple_gla", "gla": "chunk_gla",
             "delta_rule": "chunk_delta_rule", "gated_delta_rule": "chunk_gated_delta_rule"}


# the keyword arguments of fla 0.6.0's chunk functions (fla/ops/<op>/chunk.py; chunk_size through **kwargs)
_COMMON = {"scale", "initial_state", "output_final_state", "cu_seqlens"}
FLA_KEYWORDS = {"linear_attention": _COMMON | {"normalize"},
                "simple_gla": _COMMON | {"cu_seqlens_cpu", "chunk_size", "g_gamma", "state_v_first"},
                "gla": _COMMON | {"cu_seqlens_cpu", "state_v_first"},
                "delta_rule": _COMMON | {"cu_seqlens_cpu", "chunk_size", "use_qk_l2norm_in_kernel"},
                "gated_delta_rule": _COMMON | {"cu_seqlens_cpu", "chunk_size", "use_qk_l2norm_in_kernel",
                                               "state_v_first", "chunk_indices"}}


def _linear_ops() -> list:
    return [e for e in registry.all_ops() if e.family == "linear"]


def test_fla_mapping_covers_every_linear_op():
    for e in _linear_ops():
        mapped = baselines.FLA_OPS[e.name]  # every linear op is mapped or says why not
        if e.name == "ttt_linear":
            assert isinstance(mapped, str) and mapped.startswith("no fla counterpart")
            continue
        module, name, extra = mapped
        assert name == FLA_NAMES[e.name] and module == f"fla.ops.{module.split('.')[-1]}"
        assert extra.get("normalize", False) is False and extra.get("use_qk_l2norm_in_kernel", False) is False
    assert baselines.FLA_OPS["linear_attention"][2] == {"normalize": False}  # ours is unnormalised


def test_fla_reason_strings_on_the_cpu():
    lin = registry.get("simple_gla")
    inputs = lin.make_inputs(LINEAR_CHUNK, torch.float32, "cpu")
    assert "CUDA GPU" in baselines.BASELINES["fla"](lin, LINEAR_CHUNK, inputs)
    ttt = registry.get("ttt_linear")
    assert "no fla counterpart" in baselines.BASELINES["fla"](ttt, LINEAR_CHUNK,
                                                              ttt.make_inputs(LINEAR_CHUNK, torch.float32, "cpu"))
    flash = registry.get("flash_fwd")
    assert baselines.BASELINES["fla"](flash, TINY, flash.make_inputs(TINY, torch.float32, "cpu")) == \
        "not a linear-attention op"


def test_linear_anchor_shapes():
    for name in ("simple_gla", "gla", "gated_delta_rule"):
        anchors = registry.get(name).shapes["anchors"]
        got = {(s["B"], s["T"], s["H"], s["K"]) for s in anchors if s["form"] == "chunk" and s["K"] == s["V"]}
        assert {(1, 32768, 16, 128), (8, 2048, 16, 128)} <= got


def _fake_fla(monkeypatch, calls: list, *, wrong: bool = False) -> None:
    """Modules ``fla.ops.<op>`` whose chunk functions check fla's signature and run our fp32 reference
    (``wrong``: ignore the gates, i.e. a different computation)."""
    from tvm_attn.ops.linear.reference import REFERENCES

    def make(op):
        gates = {"linear_attention": (), "simple_gla": ("g",), "gla": ("g",), "delta_rule": ("beta",),
                 "gated_delta_rule": ("g", "beta")}[op]

        def fn(q, k, v, *per_token, **kwargs):
            unknown = set(kwargs) - FLA_KEYWORDS[op]
            assert not unknown, f"fla's {FLA_NAMES[op]} takes no {unknown}"
            scale, initial_state = kwargs.get("scale"), kwargs.get("initial_state")
            output_final_state, cu_seqlens = kwargs.get("output_final_state", False), kwargs.get("cu_seqlens")
            calls.append({"op": op, "scale": scale, "output_final_state": output_final_state,
                          "normalize": kwargs.get("normalize"), "l2norm": kwargs.get("use_qk_l2norm_in_kernel"),
                          "cu_seqlens": cu_seqlens, "chunk_size": kwargs.get("chunk_size", 64)})
            assert len(per_token) == len(gates)
            kw = dict(zip(gates, per_token))
            if wrong:
                kw = {n: (torch.zeros_like(x) if n == "g" else torch.ones_like(x)) for n, x in kw.items()}
            o, ht = REFERENCES[op](q, k, v, **kw, scale=scale, initial_state=initial_state,
                                   output_final_state=output_final_state, cu_seqlens=cu_seqlens)
            return o.to(q.dtype), ht
        return fn

    for op, name in FLA_NAMES.items():
        module = baselines.FLA_OPS[op][0]
        mod = types.ModuleType(module)
        setattr(mod, name, make(op))
        monkeypatch.setitem(sys.modules, module, mod)


def test_fla_call_passes_our_arguments(monkeypatch):
    calls: list = []
    _fake_fla(monkeypatch, calls)
    for e in _linear_ops():
        if e.name == "ttt_linear":
            assert baselines.fla_call(e, LINEAR_CHUNK, {}) == baselines.FLA_OPS["ttt_linear"]
            continue
        for shape in e.shapes["quick"]:
            inputs = e.make_inputs(shape, torch.float32, "cpu")
            call = baselines.fla_call(e, shape, inputs)
            if shape["form"] != "chunk":
                assert isinstance(call, str) and "chunk form only" in call
                continue
            refs = driver.reference(e, shape, inputs)
            res = driver.check_baseline(e, call, refs, "float32")
            assert "missing" not in res and res["rel_err"] < 1e-5, (e.name, shape, res)
            c = calls[-1]
            assert c["op"] == e.name and c["scale"] == 64 ** -0.5 and c["output_final_state"] is True
            # fla's chunk_linear_attn normalises by default (ours does not); the others take no such flag
            assert c["normalize"] is (False if e.name == "linear_attention" else None)
            assert c["l2norm"] is (False if "delta" in e.name else None) and c["chunk_size"] == 64
            assert (c["cu_seqlens"] is None) == ("seqlens" not in shape)
            if c["cu_seqlens"] is not None:
                assert c["cu_seqlens"].dtype == torch.int64


def test_fla_autotune_is_redone_for_each_shape(monkeypatch):
    # fla's autotune keys omit B and T: a shape change must empty every autotuner's cache (one held
    # directly, one under a heuristics wrapper's ``fn``), the same shape again must keep it
    class Autotuner:
        def __init__(self):
            self.cache = {}

    autotuner_mod = types.ModuleType("triton.runtime.autotuner")
    autotuner_mod.Autotuner = Autotuner
    for name in ("triton", "triton.runtime"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "triton.runtime.autotuner", autotuner_mod)
    direct, wrapped = Autotuner(), Autotuner()
    fla_mod = types.ModuleType("fla.ops.fake")
    fla_mod.kernel_a = direct
    fla_mod.kernel_b = types.SimpleNamespace(fn=wrapped)
    monkeypatch.setitem(sys.modules, "fla.ops.fake", fla_mod)
    monkeypatch.setattr(baselines, "_fla_tuned_for", [None])

    def fill():
        direct.cache["key"] = wrapped.cache["key"] = "config tuned for the last shape"

    fill()
    baselines._fla_autotune_for("gla", {"B": 8, "T": 2048})
    assert direct.cache == {} and wrapped.cache == {}
    fill()
    baselines._fla_autotune_for("gla", {"B": 8, "T": 2048})
    assert direct.cache and wrapped.cache
    baselines._fla_autotune_for("gla", {"B": 1, "T": 32768})
    assert direct.cache == {} and wrapped.cache == {}


def test_driver_checks_fla_before_timing_it(monkeypatch):
    """A checked baseline that computes the same thing is timed with its error beside the time; one that
    computes something else is recorded as not comparable, untimed."""
    e = registry.get("gated_delta_rule")
    for wrong in (False, True):
        calls: list = []
        with monkeypatch.context() as m:
            _fake_fla(m, calls, wrong=wrong)
            m.setitem(baselines.BASELINES, "fla", baselines.fla_call)  # the CUDA/installed checks skipped
            row = driver.bench_point(e, LINEAR_CHUNK, "float32", "cpu", ["fla"], driver.L2_DEFAULT)
        assert row["check"]["ok"] and row["check"]["rel_err"] < 1e-4
        fla = row["baselines"]["fla"]
        if wrong:
            assert "s" not in fla and fla["missing"].startswith("not comparable") and fla["rel_err"] > 5e-2
        else:
            assert fla["s"] > 0 and fla["rel_err"] < 1e-5 and "missing" not in fla
            md = report.markdown({"provenance": {"card": {"name": "c"}, "device": "cpu", "date": "d", "torch": "t",
                                                 "tvm": "v"}, "ceilings": {}, "rows": [row]})
            assert "err " in md and "ours " in md
