"""What Tune runs next: a fixed list of trials (grid, ablation) or Optuna's proposals
(search), each handed to the trainable as the envelope of `orchestrator.tune_run`
({TRIAL: TrialConfig dict, ...}); and the early-stopping scheduler of a search study.

Both designs go through a Tune `Searcher`, so the trainable, the MLflow callback and the
progress display see the same config shape whatever the design.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ray.tune.search import ConcurrencyLimiter, Searcher

from models.config import ConfigError
from orchestrator.tune_run import trial_envelope
from search_spaces.search import InfeasibleParams
from workers.config import TrialConfig
from workers.results import EPOCH

# How often a proposal may land on a trial that already ran before the space counts as
# exhausted (a small categorical space fully explored).
MAX_REPEATED_PROPOSALS = 50


class _NoTuneState:
    """resweep resumes a study from MLflow (done trials, checkpoint tags), never from
    Tune's experiment snapshot, so searchers need not save their state there."""

    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


class TrialListSearcher(_NoTuneState, Searcher):
    """Hands out a fixed list of trial configs in order, then FINISHED."""

    def __init__(self, configs: list[dict[str, Any]]):
        super().__init__()
        self.configs = list(configs)
        self.next_index = 0

    def suggest(self, trial_id: str):
        if self.next_index >= len(self.configs):
            return Searcher.FINISHED
        config = self.configs[self.next_index]
        self.next_index += 1
        return config

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


class TrialResolvingSearcher(_NoTuneState, Searcher):
    """Wraps an Optuna searcher: turns each proposal (a flat {key: value} dict) into a
    TrialConfig with `resolve`, and skips proposals whose trial_id already ran (telling
    Optuna the known result instead) so no trial runs twice.

    known_values: trial_id -> the study metric of trials done earlier (MLflow).
    """

    def __init__(self, inner: Searcher, resolve: Callable[[dict], TrialConfig],
                 known_values: dict[str, float | None] | None = None,
                 resume_from: dict[str, str] | None = None):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.resolve = resolve
        self.known_values = dict(known_values or {})
        self.resume_from = dict(resume_from or {})  # trial_id -> checkpoint to continue
        self.inner_ids: dict[str, str] = {}   # Tune trial id -> id the inner searcher knows
        self.active: dict[str, str] = {}      # Tune trial id -> trial_id it runs

    def set_search_properties(self, metric, mode, config, **spec):
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        for attempt in range(MAX_REPEATED_PROPOSALS):
            inner_id = trial_id if attempt == 0 else f"{trial_id}~{attempt}"
            params = self.inner.suggest(inner_id)
            if params is None or params == Searcher.FINISHED:
                return params
            try:
                trial = self.resolve(params)
            except InfeasibleParams:
                # A constraint excludes it or its net cannot be built: a failed proposal.
                self.inner.on_trial_complete(inner_id, result=None, error=True)
                continue
            running = trial.trial_id in self.active.values()
            if trial.trial_id in self.known_values or running:
                # Already ran (or is running): Optuna learns the known value (or nothing).
                value = self.known_values.get(trial.trial_id)
                # A NaN (a diverged trial's loss) would leave Optuna's trial RUNNING.
                known = value is not None and math.isfinite(value)
                result = {self.metric: value} if known else None
                self.inner.on_trial_complete(inner_id, result=result, error=False)
                continue
            self.inner_ids[trial_id] = inner_id
            self.active[trial_id] = trial.trial_id
            return trial_envelope(trial, search_params=params,
                                  resume_from=self.resume_from.pop(trial.trial_id, None))
        return Searcher.FINISHED

    def on_trial_result(self, trial_id, result):
        value = result.get(self.metric)
        if trial_id in self.inner_ids and value is not None and math.isfinite(value):
            self.inner.on_trial_result(self.inner_ids[trial_id], result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        inner_id = self.inner_ids.pop(trial_id, None)
        ran = self.active.pop(trial_id, None)
        if inner_id is None:
            return
        value = (result or {}).get(self.metric)
        if value is not None and not math.isfinite(value):
            value = None  # diverged: Optuna records the proposal as pruned
        self.inner.on_trial_complete(
            inner_id, result={**result, self.metric: value} if value is not None else None,
            error=error)
        if ran is not None and not error:
            self.known_values[ran] = value


def optuna_distribution(key: str, spec: dict[str, Any]):
    """One distribution spec of `search_spaces.search_space` -> an Optuna distribution:
    {"type": "choice", "values": [...]}, {"type": "int"|"float", "low", "high", "step",
    "log"} (bounds inclusive)."""
    import optuna.distributions as od

    kind = spec.get("type")
    if kind == "choice":
        return od.CategoricalDistribution(list(spec["values"]))
    if kind == "int":
        return od.IntDistribution(int(spec["low"]), int(spec["high"]),
                                  log=bool(spec.get("log")), step=int(spec.get("step") or 1))
    if kind == "float":
        return od.FloatDistribution(float(spec["low"]), float(spec["high"]),
                                    log=bool(spec.get("log")), step=spec.get("step"))
    raise ConfigError(f"space.{key}: got {spec!r}; a search distribution is a choice, "
                      "int or float distribution")


def make_optuna_searcher(space: dict[str, Any], *, algorithm: str, metric: str, mode: str,
                         seed: int, evaluated: list[tuple[dict, float]] = (),
                         first: list[dict] = ()):
    """Ray Tune's OptunaSearch over the study's distributions, warm-started with the
    (params, value) pairs of trials done in earlier runs of the study; `first` are
    proposals to make before sampling (interrupted trials, so they continue)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    distributions = {key: optuna_distribution(key, spec) for key, spec in space.items()}
    samplers = {"optuna-tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "optuna-random": lambda: optuna.samplers.RandomSampler(seed=seed)}
    if algorithm not in samplers:
        raise ConfigError(f"search.algorithm: got {algorithm!r}; allowed: {sorted(samplers)}")
    searcher = OptunaSearch(space=distributions, metric=metric, mode=mode,
                            sampler=samplers[algorithm](),
                            points_to_evaluate=[p for p in first if set(p) == set(distributions)]
                            or None)
    for params, value in evaluated:
        if set(params) != set(distributions):
            continue  # run under another version of the space
        try:
            searcher.add_evaluated_point(params, value)
        except ValueError:
            continue  # a value outside today's distributions
    return searcher


def limit_concurrency(searcher: Searcher, max_concurrent: int | None) -> Searcher:
    return ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher


def make_scheduler(scheduler_spec: Any, *, metric: str, mode: str, max_epochs: int | None):
    """The study's early-stopping scheduler (ASHA or median stopping) on `epoch`, or None."""
    if scheduler_spec is None:
        return None
    if hasattr(scheduler_spec, "model_dump"):
        scheduler_spec = scheduler_spec.model_dump()
    asha, median = scheduler_spec.get("asha"), scheduler_spec.get("median")
    if asha is not None:
        from ray.tune.schedulers import ASHAScheduler

        max_t = asha.get("max_t") or max_epochs
        if not max_t:
            raise ConfigError("search.scheduler.asha.max_t: the trials run for a number of "
                              "iterations, not epochs; set max_t (epochs) explicitly")
        return ASHAScheduler(time_attr=EPOCH, metric=metric, mode=mode, max_t=int(max_t),
                             grace_period=int(asha.get("grace_period", 1)),
                             reduction_factor=float(asha.get("reduction_factor", 3)))
    if median is not None:
        from ray.tune.schedulers import MedianStoppingRule

        return MedianStoppingRule(
            time_attr=EPOCH, metric=metric, mode=mode,
            grace_period=float(median.get("grace_period", 1)),
            min_samples_required=int(median.get("min_samples_required", 3)))
    return None
