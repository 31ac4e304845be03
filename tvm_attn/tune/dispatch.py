"""Tuned dispatch: find the record of (op spec, card), refuse it when stale, replay and build it."""
from __future__ import annotations

import warnings

from tvm_attn import _tvm
from tvm_attn.kernels import DeviceTarget, KernelSpec
from tvm_attn.tune import records, tasks as T

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=4)


def lookup(spec: KernelSpec, tgt: DeviceTarget):
    """The best tuned record for ``spec`` on ``tgt``'s card, or None (with one warning saying why)."""
    if spec.varlen:
        return None  # tuned on the dense compute only; varlen runs its default decision
    rec = records.find(tgt.card, spec.key)
    if rec is None:
        if tgt.kind == "cuda":
            _warn_once(f"missing:{tgt.card}:{spec.key}",
                       f"tvm-attn: no tuned record for {spec.key} on {tgt.card}; using the default schedule. "
                       f"Tune it with: tvm-attn tune --op {spec.op} --head-dim {spec.head_dim} --group {spec.group} "
                       f"--dtype {spec.dtype} {'--causal' if spec.causal else ''}".rstrip())
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


def load_best(spec: KernelSpec, tgt: DeviceTarget, rec: records.RecordDir):
    from tvm_attn.tune.run import Best

    prov = rec.provenance
    if prov.get("tvm") != _tvm.TVM_VERSION:
        raise StaleRecord(f"tuned with TVM {prov.get('tvm')}, this is {_tvm.TVM_VERSION}")
    key = prov["best"]["variant"]
    try:
        variant = T.variant_from_key(spec, tgt.kind, key)
    except KeyError as e:
        raise StaleRecord(str(e)) from None
    func = T.specialize(T.cpu_func(spec, variant) if tgt.kind == "cpu" else T.cuda_func(spec, variant),
                        prov["representative_shape"], prov["sm_scale"])
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


def build_tuned(spec: KernelSpec, tgt: DeviceTarget, best):
    variant = T.variant_from_key(spec, tgt.kind, best.variant_key)
    sch = T.replay(spec, tgt.kind, variant, best.trace)
    if tgt.kind == "cpu":
        postproc = _tvm.ms.postproc.RewriteParallelVectorizeUnroll()
        ctx = _tvm.ms.TuneContext(mod=sch.mod, target=_tvm.cpu_target(),
                                  space_generator=_tvm.ms.space_generator.ScheduleFn(
                                      lambda s: None, sch_rules=[], postprocs=[postproc], mutator_probs={}))
        for p in ctx.space_generator.postprocs:
            p.apply(sch)
        return _tvm.compile_module(sch.mod, _tvm.cpu_target())
    return _tvm.compile_module(sch.mod, _tvm.cuda_target(tgt.arch),
                               _tvm.build_config(async_copy=variant.stages > 0))

