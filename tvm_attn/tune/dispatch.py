"""Tuned dispatch: find the record of (op spec, card), refuse it when stale, replay and build it."""
from __future__ import annotations

import warnings

from tvm_attn import _tvm
from tvm_attn.kernels import DeviceTarget
from tvm_attn.tune import records, tasks as T

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=4)


def lookup(spec, tgt: DeviceTarget):
    """The best tuned record for ``spec`` (a flash ``KernelSpec`` or a linear split kernel's
    ``LinearSpec``) on ``tgt``'s card, or None (with one warning saying why)."""
    if spec.varlen:
        return None  # tuned on the dense compute only; varlen runs its default decision
    fam = T.family(spec)
    rec = records.find(tgt.card, spec.key)
    if rec is None:
        if tgt.kind == "cuda":  # one warning per op and card (a linear op has two or three kernels)
            _warn_once(f"missing:{tgt.card}:{spec.op}:{fam.tune_hint(spec)}",
                       f"tvm-attn: no tuned record for {spec.key} on {tgt.card}; using the default schedule. "
                       f"Tune it with: {fam.tune_hint(spec)}")
        return None
    try:
        best = load_best(spec, tgt, rec)
    except StaleRecord as e:
        _warn_once(f"stale:{rec.path}", f"tvm-attn: ignoring stale tuning record {rec.path}: {e}")
        return None
    prov = rec.provenance
    if prov["best"]["measured_s"] >= prov["default"]["measured_s"]:
        return None  # the run that made the record found nothing faster than the default decision
    return best


class StaleRecord(Exception):
    pass


def load_best(spec, tgt: DeviceTarget, rec: records.RecordDir):
    from tvm_attn.tune.run import Best

    fam = T.family(spec)
    prov = rec.provenance
    if prov.get("tvm") != _tvm.TVM_VERSION:
        raise StaleRecord(f"tuned with TVM {prov.get('tvm')}, this is {_tvm.TVM_VERSION}")
    key = prov["best"]["variant"]
    try:
        variant = fam.variant_from_key(spec, tgt.kind, key)
    except KeyError as e:
        raise StaleRecord(str(e)) from None
    func = fam.task_func(spec, tgt.kind, variant, prov)
    current = T.workload_hash(func)
    if prov["workloads"].get(key) != current:
        raise StaleRecord(f"the compute of variant {key} changed (workload hash {current}, record "
                          f"{prov['workloads'].get(key)})")
    trace, run_s = _top_record(rec, func)
    return Best(key, trace, run_s, prov["best"]["record"])


def _top_record(rec: records.RecordDir, func):
    current = T.workload_hash(func)
    mine = [m for m in records.read_records(rec.path) if m.workload == current]
    if not mine:
        raise StaleRecord("its database holds no valid measurement of the current workload")
    top = min(mine, key=lambda m: m.run_s)
    return top.trace_json, top.run_s


def build_tuned(spec, tgt: DeviceTarget, best):
    fam = T.family(spec)
    variant = fam.variant_from_key(spec, tgt.kind, best.variant_key)
    return fam.build(spec, tgt.kind, tgt.arch, variant, fam.replay(spec, tgt.kind, variant, best.trace))
