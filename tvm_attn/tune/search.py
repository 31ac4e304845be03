"""Evolutionary search over a design space, guided by MetaSchedule's cost model, on private copies of
the workload.

MetaSchedule's own EvolutionarySearch replays every candidate on the task's shared IRModule. TVM 0.27's
schedule copy-on-write misses that a nested block's SBlockRealize is shared once an ancestor has been
copied, so transforming inside a scope block (our softmax and matmul scopes) mutates the shared module
in place and later replays fail or diverge. This strategy keeps the same algorithm (random initial
population, mutation of the best measured traces, XGBoost ranking, epsilon-greedy picks, no repeats)
but replays every trace on its own deserialised copy of the workload, which nothing else references.
"""
from __future__ import annotations

import random

from tvm_attn import _tvm

ms = _tvm.ms


@_tvm.derived_object
class PrivateCopyEvolutionarySearch(ms.search_strategy.PySearchStrategy):
    def __init__(self, space, mutators: list, *, population: int = 48, init_random: int = 24,
                 eps_greedy: float = 0.25, stale_limit: int = 8, seed: int = 1) -> None:
        self.space = space  # (Schedule) -> None, the design space function
        self.mutators = mutators
        self.population = population
        self.init_random = init_random
        self.eps_greedy = eps_greedy
        self.stale_limit = stale_limit  # valid samples in a row that add nothing new: the space looks exhausted
        self.seed = seed
        self.rng = random.Random(seed)

    # -- lifecycle ------------------------------------------------------------------------------
    def _initialize_with_tune_context(self, context) -> None:
        self.context = context
        self.workload_json = _tvm.tvm.ir.save_json(context.mod)
        self.args_info = ms.arg_info.ArgInfo.from_prim_func(context.mod["main"])

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.max_trials = max_trials
        self.per_iter = num_trials_per_iter
        self.database = database
        self.cost_model = cost_model
        self.done = 0
        self.seen: set[str] = set()
        if database is not None and database.has_workload(self.context.mod):
            for rec in database.get_top_k(database.commit_workload(self.context.mod), 10_000):
                self.seen.add(_key(rec.trace))

    def post_tuning(self) -> None:
        pass

    def clone(self):
        return PrivateCopyEvolutionarySearch(self.space, self.mutators, population=self.population,
                                             init_random=self.init_random, eps_greedy=self.eps_greedy,
                                             stale_limit=self.stale_limit, seed=self.rng.randrange(1, 2**31))

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.done += len(results)

    # -- search ---------------------------------------------------------------------------------
    def _fresh(self):
        return _tvm.tvm.ir.load_json(self.workload_json)

    def _sample(self):
        sch = _tvm.Schedule(self._fresh(), seed=self.rng.randrange(1, 2**31))
        try:
            self.space(sch)
        except Exception:  # noqa: BLE001  (a sample the space rejects, e.g. an invalid tiling)
            return None
        return sch

    def _replay(self, trace):
        sch = _tvm.Schedule(self._fresh(), seed=self.rng.randrange(1, 2**31))
        try:
            trace.apply_to_schedule(sch, remove_postproc=True)
        except Exception:  # noqa: BLE001
            return None
        return sch

    def _mutate(self, trace):
        for _ in range(4):
            mutator = self.rng.choice(self.mutators)
            new = mutator.apply(trace)
            if new is not None:
                return new
        return None

    def _parents(self) -> list:
        if self.database is None or not self.database.has_workload(self.context.mod):
            return []
        top = self.database.get_top_k(self.database.commit_workload(self.context.mod), 8)
        return [r.trace for r in top]

    def generate_measure_candidates(self):
        remaining = self.max_trials - self.done
        if remaining <= 0:
            return None
        want = min(self.per_iter, remaining)
        pool: dict[str, object] = {}
        parents = self._parents()
        # a small space (a split linear kernel has a few warp counts) holds fewer unmeasured candidates
        # than a population: stop after ``stale_limit`` valid samples in a row that add none, not after 4x the
        # population (each sample schedules a whole kernel: 0.1-0.2 s for a split linear one), and end the task
        # once none is left
        tries = stale = 0
        while len(pool) < self.population and tries < 4 * self.population and stale < self.stale_limit:
            tries += 1
            if parents and len(pool) >= self.init_random:
                trace = self._mutate(self.rng.choice(parents))
                sch = self._replay(trace) if trace is not None else None
            else:
                sch = self._sample()
            if sch is None:
                continue
            key = _key(sch.trace)
            if key not in self.seen and key not in pool:
                pool[key] = sch
                stale = 0
            else:
                stale += 1
        if not pool:
            return None
        keys = list(pool)
        cands = [ms.search_strategy.MeasureCandidate(pool[k], self.args_info) for k in keys]
        if self.cost_model is not None:
            scores = list(self.cost_model.predict(self.context, cands))
            order = sorted(range(len(keys)), key=lambda i: -scores[i])
        else:
            order = list(range(len(keys)))
        n_random = int(round(want * self.eps_greedy))
        picked = order[: want - n_random]
        rest = [i for i in order if i not in picked]
        picked += self.rng.sample(rest, min(n_random, len(rest)))
        for i in picked:
            self.seen.add(keys[i])
        return [cands[i] for i in picked]


def _key(trace) -> str:
    # a candidate is its decisions (the instructions are the same for every sample of a space)
    return repr(sorted((str(inst.kind.name) + str(list(inst.outputs)), str(d)) for inst, d in trace.decisions.items()))
