"""The benchmark driver on the CPU: registry shapes, exact counts, the correctness gate (a deliberately
wrong op gets no timing), baselines in the same run, results with provenance and reports."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

from tvm_attn import registry
from tvm_attn.bench import driver, report
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
    assert "| flash_fwd |" in run.with_suffix(".md").read_text()
    assert run.with_suffix(".png").stat().st_size > 0
    assert "flash_fwd" in report.markdown(result)


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


def test_demo_command_checks_every_op():
    r = subprocess.run([sys.executable, "-m", "tvm_attn.cli", "demo", "--device", "cpu"], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all ops match the reference" in r.stdout
    for e in registry.all_ops():
        assert e.name in r.stdout
