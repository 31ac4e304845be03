"""Markdown table and PNG (ratio bars) of a benchmark JSON; the README's performance section."""
from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README_START, README_END = "<!-- perf:start -->", "<!-- perf:end -->"


def _label(s: dict) -> str:
    if "Tq" not in s and "seqlens_q" not in s:
        from .driver import _shape_str

        return _shape_str(s)
    if "seqlens_q" in s:
        return f"varlen N={len(s['seqlens_q'])} D={s['D']}{' c' if s['causal'] else ''}"
    return f"B{s['B']} T{s['Tq']}" + (f"/{s['Tk']}" if s['Tk'] != s['Tq'] else "") + \
        f" H{s['Hq']}/{s['Hkv']} D{s['D']}{' causal' if s.get('causal') else ''}"


def markdown(result: dict) -> str:
    prov, rows = result["provenance"], result["rows"]
    names = sorted({n for r in rows for n in r.get("baselines", {})})
    lines = [f"Card: **{prov['card']['name']}** ({prov['device']}), {prov['date']}, torch {prov['torch']}, "
             f"TVM {prov['tvm']}, git {prov.get('git')}{' (dirty)' if prov.get('git_dirty') else ''}."
             + (" The run stopped before its last point (these are the points it finished)."
                if result.get("complete") is False else ""),
             "Ceilings measured in the same run: " +
             ", ".join(f"{k} {v:.2f}" for k, v in result["ceilings"].items()) + ".", "",
             "Ratios are baseline time / tvm-attn time (> 1: tvm-attn is faster); medians after warm-up, calls "
             "back to back (the host's time where launching a call takes longer than running it)."
             + (" kernels: the same ratio of GPU kernel time per call (CUPTI, torch.profiler), the host left out."
                if any("ours_gpu_s" in r for r in rows) else ""), "",
             "| op | shape | dtype | tvm-attn ms | TFLOP/s | " + " | ".join(names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for r in rows:
        if "ours_s" not in r:
            why = r.get("error") or f"check failed (err {r['check']['max_err']:.2e})"
            lines.append(f"| {r['op']} | {_label(r['shape'])} | {r['dtype']} | {why} | | " + " | " * len(names))
            continue
        t = r["ours_s"]
        cells = [_cell(r, r["baselines"].get(n, {"missing": "not run"})) for n in names]
        lines.append(f"| {r['op']} | {_label(r['shape'])} | {r['dtype']} | {t * 1e3:.3f} | "
                     f"{r['flops'] / t / 1e12:.1f} | " + " | ".join(cells) + " |")
    missing = sorted({f"{n}: {b['missing']}" for r in rows for n, b in r.get("baselines", {}).items()
                      if "missing" in b})
    if any("rel_err" in b for r in rows for b in r.get("baselines", {}).values()):
        lines += ["", "err: relative error ‖o − ref‖₂/‖ref‖₂ of the baseline's output against the op's fp32 "
                  "reference, checked once before timing (ours: the same measure on our output)."]
    if missing:
        lines += ["", "Baselines not timed: " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def _cell(row: dict, b: dict) -> str:
    """A baseline's table cell: ratio and time, and its relative error beside ours when it was checked."""
    if "missing" in b:
        return "—"
    cell = f"{b['s'] / row['ours_s']:.2f}× ({b['s'] * 1e3:.3f} ms"
    if "gpu_s" in b and row.get("ours_gpu_s"):
        cell += f"; kernels {b['gpu_s'] / row['ours_gpu_s']:.2f}×: {b['gpu_s'] * 1e3:.3f} vs {row['ours_gpu_s'] * 1e3:.3f} ms"
    if "rel_err" in b:
        ours = row["check"].get("rel_err")
        cell += f"; err {b['rel_err']:.1e}" + (f", ours {ours:.1e}" if ours is not None else "")
    return cell + ")"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "ours_s" in r]
    names = sorted({n for r in rows for n, b in r["baselines"].items() if "missing" not in b})
    if not rows or not names:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [r["baselines"][n]["s"] / r["ours_s"] if "s" in r["baselines"].get(n, {}) else 0 for r in rows]
        ax.bar([x + i * width for x in range(len(rows))], vals, width, label=n)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
    ax.set_xticklabels([f"{r['op']}\n{_label(r['shape'])}" for r in rows], rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("baseline time / tvm-attn time")
    ax.set_title(f"tvm-attn vs baselines, {result['provenance']['card']['name']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(json_path: Path) -> tuple[Path, Path]:
    result = json.loads(Path(json_path).read_text())
    md, png = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    md.write_text(markdown(result))
    plot(result, png)
    return md, png


def update_readme(results_dir: Path = REPO / "bench" / "results", readme: Path = REPO / "README.md") -> None:
    """Rewrite the README's performance section: per card, each op's rows from the newest run that
    measured that op (sessions measure different ops; an op's older runs stay in the results folder)."""
    parts = []
    for card in sorted(p for p in results_dir.iterdir() if p.is_dir() and p.name != "cpu"):
        runs = sorted(card.glob("bench-*.json"))  # names sort by their time stamp
        if not runs:
            continue
        loaded = {run: json.loads(run.read_text()) for run in runs}
        newest = {row["op"]: run for run in runs for row in loaded[run]["rows"]}  # the last run wins
        parts.append(f"### {card.name}\n")
        for run in runs:
            ops = {op for op, r in newest.items() if r == run}
            if not ops:
                continue
            rel = run.relative_to(readme.parent)
            result = dict(loaded[run], rows=[row for row in loaded[run]["rows"] if row["op"] in ops])
            parts.append(f"From `{rel}` ([plot]({rel.with_suffix('.png')})):\n\n" + markdown(result))
    text = readme.read_text()
    body = "\n".join(parts) or "No GPU run recorded yet.\n"
    new = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END),
                 lambda _: f"{README_START}\n{body}{README_END}", text, flags=re.S)
    readme.write_text(new)
