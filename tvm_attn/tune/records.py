"""Tuning records on disk and their lookup.

    <root>/<gpu-key>/<spec-key>/database_workload.json        MetaSchedule JSON database (one line each)
                                database_tuning_record.json
                                provenance.json                TVM version, target, workload hashes, card,
                                                               driver, date, trials, best/default latency
                                tuning.png                     best latency against trials

Roots, searched in order: ``$TVM_ATTN_TUNING_DIR`` (default ``~/.cache/tvm_attn/tuning_logs``, where
``tvm-attn tune`` writes unless told otherwise), then the records shipped in the package.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

DB_FILES = ("database_workload.json", "database_tuning_record.json")


def shipped_root() -> Path:
    from tvm_attn import tuning_logs

    return Path(tuning_logs.__file__).resolve().parent


def user_root() -> Path:
    return Path(os.environ.get("TVM_ATTN_TUNING_DIR", Path.home() / ".cache" / "tvm_attn" / "tuning_logs"))


def roots() -> list[Path]:
    return [user_root(), shipped_root()]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sanitize(folder: Path) -> int:
    """Drop lines a killed run left half-written at the end of the database files; returns how many.

    Records are appended one JSON line at a time, so every complete line is a finished record."""
    dropped = 0
    for name in DB_FILES:
        path = folder / name
        if not path.exists():
            continue
        good = []
        for line in path.read_text().splitlines():
            try:
                json.loads(line)
                good.append(line)
            except json.JSONDecodeError:
                dropped += 1
        if dropped:
            write_atomic(path, "".join(g + "\n" for g in good))
    return dropped


@dataclass(frozen=True)
class Measured:
    """One tuning record: its workload's structural hash (hex), the trace (MetaSchedule JSON), seconds."""

    workload: str
    trace_json: list
    run_s: float

    @property
    def id(self) -> str:
        return hashlib.sha256((self.workload + json.dumps(self.trace_json)).encode()).hexdigest()[:10]


def read_records(folder: Path) -> list[Measured]:
    """Parse the MetaSchedule JSON database of ``folder`` (format: database_workload.json lines
    ``[structural hash, base64 IR]``, database_tuning_record.json lines
    ``[workload index, [trace, run_secs, target, args_info]]``).

    Read here rather than through ``ms.database.JSONDatabase``: that loader re-applies every trace to
    the one shared workload module, which TVM 0.27's copy-on-write bug corrupts for our schedules
    (see tune/search.py); a failed measurement (1e10 s) is skipped."""
    sanitize(folder)
    wl_path, rec_path = folder / DB_FILES[0], folder / DB_FILES[1]
    if not rec_path.exists():
        return []
    # as MetaSchedule's shash2hex writes them: 0x and 16 digits (leading zeros kept)
    workloads = [f"0x{int(json.loads(line)[0]):016x}" for line in wl_path.read_text().splitlines()]
    out = []
    for line in rec_path.read_text().splitlines():
        idx, (trace, secs, *_rest) = json.loads(line)
        secs = [float(x) for x in secs]
        if secs and max(secs) < 1e9:
            out.append(Measured(workloads[idx], trace, sum(secs) / len(secs)))
    return out


def append_record(folder: Path, workload_json: list, record_json: list) -> None:
    """Append one measured candidate in MetaSchedule's JSON database format, one fsync'ed line at a
    time, so a kill loses at most the line being written (``sanitize`` drops it on the next start)."""
    wl_path, rec_path = folder / DB_FILES[0], folder / DB_FILES[1]
    hashes = [json.loads(line)[0] for line in wl_path.read_text().splitlines()] if wl_path.exists() else []
    key = str(workload_json[0])
    if key not in hashes:
        _append(wl_path, json.dumps([key, str(workload_json[1])]))
        hashes.append(key)
    _append(rec_path, json.dumps([hashes.index(key), record_json]))


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class RecordDir:
    gpu: str
    spec: str
    path: Path

    @property
    def provenance(self) -> dict:
        return json.loads((self.path / "provenance.json").read_text())


def target_arch(prov: dict) -> str | None:
    """The CUDA arch a record was tuned for (provenance ``target`` is the target's JSON)."""
    target = prov.get("target")
    if isinstance(target, str):  # written as text by early runs
        m = re.search(r'"arch":\s*"([^"]+)"', target)
        return m.group(1) if m else None
    return (target or {}).get("arch")


def find(gpu: str, spec_key: str) -> RecordDir | None:
    for root in roots():
        folder = root / gpu / spec_key
        if (folder / "provenance.json").exists() and (folder / DB_FILES[1]).exists():
            return RecordDir(gpu, spec_key, folder)
    return None


def listing() -> list[RecordDir]:
    seen, out = set(), []
    for root in roots():
        if not root.is_dir():
            continue
        for prov in sorted(root.glob("*/*/provenance.json")):
            gpu, spec = prov.parent.parent.name, prov.parent.name
            if (gpu, spec) not in seen:
                seen.add((gpu, spec))
                out.append(RecordDir(gpu, spec, prov.parent))
    return out
