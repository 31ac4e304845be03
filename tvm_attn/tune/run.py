"""``tvm-attn tune``: MetaSchedule over a specialisation's variants with the XGBoost cost model and
evolutionary search, measured on the local GPU (or CPU) or through an RPC tracker; records appended
as they are measured (a kill loses at most the batch in flight), then provenance and a plot."""
from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tvm_attn import _tvm, kernels
from tvm_attn.tune import records, tasks as T
from tvm_attn.tune.search import PrivateCopyEvolutionarySearch

ms = _tvm.ms


# ------------------------------------------------------------------------------ builder and mutator
def ms_build_cuda(mod, target, _params):
    """MetaSchedule builder for the flash CUDA schedules (runs in builder workers: picklable)."""
    _tvm.import_tensor_intrin()
    _tvm._patch_lower_warp_memory()
    with _tvm.tvm.transform.PassContext(opt_level=3, config=_tvm.build_config()):
        return _tvm.tvm.build(mod, target=target)


def ms_build_cpu(mod, target, _params):
    with _tvm.tvm.transform.PassContext(opt_level=3):
        return _tvm.tvm.build(mod, target=target)


@_tvm.derived_object
class MutateCategorical(ms.mutator.PyMutator):
    """Resample one ``sample_categorical`` decision (MetaSchedule's own mutators leave them alone,
    except the unroll ones)."""

    def __init__(self, seed: int = 1) -> None:
        import random

        self._rng = random.Random(seed)

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, trace, _):
        insts = [i for i in trace.insts if i.kind.name == "SampleCategorical" and len(i.attrs[0]) > 1]
        if not insts:
            return None
        inst = self._rng.choice(insts)
        old = int(trace.decisions[inst])
        new = self._rng.choice([c for c in range(len(inst.attrs[0])) if c != old])
        return trace.with_decision(inst, new, remove_postproc=True)

    def clone(self):
        return MutateCategorical(self._rng.randrange(1, 2**31))


# ------------------------------------------------------------------------------------ callbacks
@_tvm.derived_object
class Persist(ms.measure_callback.PyMeasureCallback):
    """Copy each batch's records from the run's own (initially empty) JSON database into the records
    folder, one fsync'ed line per record, as soon as MetaSchedule has written them."""

    def __init__(self, scratch: Path, folder: Path) -> None:
        self.scratch, self.folder, self.seen = scratch, folder, 0

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        workloads = [json.loads(line) for line in (self.scratch / records.DB_FILES[0]).read_text().splitlines()]
        lines = (self.scratch / records.DB_FILES[1]).read_text().splitlines()
        for line in lines[self.seen:]:
            idx, rec = json.loads(line)
            records.append_record(self.folder, workloads[idx], rec)
        self.seen = len(lines)


@_tvm.derived_object
class Progress(ms.measure_callback.PyMeasureCallback):
    """One line per measured batch: trials done, best latency so far, elapsed time."""

    def __init__(self, total: int, flops: int, done: int = 0) -> None:
        self.total, self.flops, self.done = total, flops, done
        self.best = math.inf
        self.start = time.time()
        self.curve: list[float] = []

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        for r in runner_results:
            secs = [float(s) for s in (r.run_secs or [])]
            t = sum(secs) / len(secs) if secs and r.error_msg is None else math.inf
            self.best = min(self.best, t)
            self.done += 1
            self.curve.append(self.best)
        width = 30
        filled = int(width * min(1.0, self.done / max(self.total, 1)))
        best = f"{self.best * 1e3:.3f} ms ({self.flops / self.best / 1e12:.1f} TFLOP/s)" if self.best < math.inf \
            else "none valid yet"
        end = "\r" if sys.stdout.isatty() else "\n"
        print(f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} trials  best {best}  "
              f"{time.time() - self.start:5.0f} s", end=end, flush=True)


# ------------------------------------------------------------------------------------------ tune
@dataclass
class TuneResult:
    spec: object  # KernelSpec (flash) or LinearSpec (a linear split kernel)
    folder: Path
    default_s: float
    tuned_s: float
    best_variant: str
    trials: int
    flops: int
    extra: dict = field(default_factory=dict)


def target_for(device: str, arch: str | None):
    if device == "cpu":
        return _tvm.cpu_target()
    return _tvm.Target({"kind": "cuda", "arch": arch or "sm_90a", "max_shared_memory_per_block": 232448,
                        "max_threads_per_block": 1024, "thread_warp_size": 32})


def tune(spec, *, device: str, gpu: str, arch: str | None, trials: int, out_root: Path,
         resume: bool = False, rpc: tuple[str, int, str] | None = None, workers: int | None = None,
         seed: int = 1) -> TuneResult:
    """Tune ``spec`` (a flash ``KernelSpec`` or a linear split kernel's ``LinearSpec``: its tasks module,
    ``tasks.family(spec)``, supplies the tasks, builder, flops and measurement)."""
    folder = out_root / gpu / spec.key
    if folder.exists() and any((folder / f).exists() for f in records.DB_FILES) and not resume:
        raise FileExistsError(f"{folder} already holds records: pass --resume to continue them")
    folder.mkdir(parents=True, exist_ok=True)
    dropped = records.sanitize(folder)
    if dropped:
        print(f"dropped {dropped} half-written line(s) left by an interrupted run", flush=True)
    _tvm.import_tensor_intrin()
    fam = T.family(spec)
    shape = fam.representative_shape(spec, device)
    tlist = fam.tasks(spec, device, shape)
    target = target_for(device, arch)
    # MetaSchedule's JSONDatabase re-applies stored traces to one shared module when it loads, which
    # TVM 0.27's copy-on-write bug breaks for these schedules (search.py): each run writes a fresh
    # database in a scratch folder, and Persist appends its records to the folder's files per batch
    scratch = Path(tempfile.mkdtemp(prefix=".run-", dir=folder))
    db = ms.database.JSONDatabase(path_workload=str(scratch / records.DB_FILES[0]),
                                  path_tuning_record=str(scratch / records.DB_FILES[1]), allow_missing=True)
    done = _count_records(folder)
    remaining = max(0, trials - done)
    flops = fam.flops(spec, shape)
    progress = Progress(trials, flops, done)
    if remaining:
        contexts = [ms.TuneContext(
            mod=_tvm.tvm.IRModule({"main": t.func.with_attr("global_symbol", "main")}),
            target=target,
            # the real space lives in the search strategy, which replays on private copies (search.py);
            # the context's own space is the identity so nothing transforms the shared task module
            space_generator=ms.space_generator.ScheduleFn(
                _identity, sch_rules=[],
                postprocs=[ms.postproc.RewriteParallelVectorizeUnroll()] if device == "cpu" else [],
                mutator_probs={}),
            search_strategy=PrivateCopyEvolutionarySearch(t.space, _mutators(), population=16, init_random=8,
                                                          seed=seed + n),
            task_name=t.name, rand_state=seed + n, num_threads=workers or 2,
        ) for n, t in enumerate(tlist)]
        ms.tune_tasks(
            tasks=contexts, task_weights=[1.0] * len(contexts), work_dir=str(folder / ".ms_logs"),
            max_trials_global=remaining, max_trials_per_task=max(2, math.ceil(remaining / len(contexts)) * 2),
            num_trials_per_iter=min(16, max(2, remaining // len(contexts))),
            builder=ms.builder.LocalBuilder(max_workers=workers, timeout_sec=180,
                                            f_build=fam.ms_builder(device),
                                            initializer=_tvm.import_tensor_intrin),
            runner=_runner(device, rpc),
            database=db,
            cost_model=ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(),
                                              adaptive_training=True, num_tuning_cores=workers or 2),
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), Persist(scratch, folder),
                               progress],
            # round-robin joins every batch the runner has finished before it sends the next one, so each
            # batch's records are persisted (and its progress line printed) as soon as it is measured; the
            # gradient scheduler joins none until every task has had its first batch (a variant space's 2-11
            # tasks: a short run's every batch), which a kill in that round would have lost
            task_scheduler="round-robin",
        )
        print(flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    best = best_record(spec, device, folder)
    if best is None:
        raise RuntimeError(f"no valid schedule was measured for {spec.key}; see {folder / '.ms_logs'}")
    default_s, tuned_s = measure_default_and_tuned(spec, device, arch, shape, best)
    prov = {
        "spec": spec.key, "op": spec.op, "gpu": gpu, "device": device, "tvm": _tvm.TVM_VERSION,
        "target": json.loads(str(target)) if str(target).startswith("{") else str(target), "representative_shape": shape, "scale": fam.scale_of(spec),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "trials": _count_records(folder), "source_digest": kernels.source_digest(),
        "workloads": {T.variant_key(t.variant): t.workload_hash() for t in tlist},
        "best": {"variant": best.variant_key, "run_secs": best.run_s, "measured_s": tuned_s,
                 "record": best.record_id},
        "default": {"variant": fam.default_key(spec, device), "measured_s": default_s},
        **_card(device),
    }
    records.write_atomic(folder / "provenance.json", json.dumps(prov, indent=1, default=str))
    plot_curve(folder)
    return TuneResult(spec, folder, default_s, tuned_s, best.variant_key, prov["trials"], flops)


def _identity(sch) -> None:
    return None


def _mutators() -> list:
    # tile decisions (the warp split, the CPU vector split) and every categorical knob
    return [ms.mutator.MutateTileSize(), MutateCategorical()]


def _runner(device: str, rpc: tuple[str, int, str] | None):
    cfg = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=40)
    if rpc is not None:
        host, port, key = rpc
        return ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                                       session_timeout_sec=120),
                                   evaluator_config=cfg, max_workers=1)
    return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=cfg)


def _count_records(folder: Path) -> int:
    path = folder / records.DB_FILES[1]
    return sum(1 for _ in path.open()) if path.exists() else 0


def _card(device: str) -> dict:
    if device == "cpu":
        import platform

        return {"card": platform.processor() or platform.machine()}
    from tvm_attn.gpu import card_info

    info = card_info()
    return {"card": info["name"], "driver": info.get("driver"), "capability": info["capability"]}


# ---------------------------------------------------------------------------- best record, replay
@dataclass(frozen=True)
class Best:
    variant_key: str
    trace: list  # MetaSchedule trace JSON
    run_s: float
    record_id: str


def best_record(spec, device: str, folder: Path) -> Best | None:
    """The fastest valid record over all variants whose workload is still the current compute's."""
    fam = T.family(spec)
    shape = fam.representative_shape(spec, device)
    by_hash = {t.workload_hash(): t for t in fam.tasks(spec, device, shape)}
    best = None
    for rec in records.read_records(folder):
        t = by_hash.get(rec.workload)
        if t is not None and (best is None or rec.run_s < best.run_s):
            best = Best(T.variant_key(t.variant), rec.trace_json, rec.run_s, f"{T.variant_key(t.variant)}-{rec.id}")
    return best


def measure_default_and_tuned(spec, device: str, arch: str | None, shape: dict, best: Best):
    """Time the default decision and the best record through the real call path (same inputs, same run)."""
    fam = T.family(spec)
    plans = fam.plans(spec, kernels.DeviceTarget(device, arch), best)
    default_s, tuned_s = fam.measure(spec, device, arch, shape, plans)
    return default_s, tuned_s


def plot_curve(folder: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = folder / records.DB_FILES[1]
    runs = []
    for line in path.read_text().splitlines():
        secs = json.loads(line)[1][1]
        runs.append(sum(secs) / len(secs) if secs and min(secs) < 1e9 else math.inf)
    if not runs:
        return None
    best, curve = math.inf, []
    for r in runs:
        best = min(best, r)
        curve.append(best * 1e3 if best < math.inf else float("nan"))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(curve) + 1), curve)
    ax.set_xlabel("trial")
    ax.set_ylabel("best latency (ms)")
    ax.set_title(folder.name, fontsize=9)
    fig.tight_layout()
    out = folder / "tuning.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
