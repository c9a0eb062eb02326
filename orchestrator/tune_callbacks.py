"""Driver-side Tune callbacks: every trial result goes to MLflow from here.

Workers never talk to MLflow: they `tune.report` per epoch, and `MlflowTrialLogger`
(running in the driver) hands each result to the tracker, which queues it for the trial's
child run on the background writer (`orchestrator.tracking_writer`: Tune's loop does not
wait on the store, not even to create a trial's run; a trial's end is written after all
its epochs). A trial restarted after its worker died, or continued after a killed driver,
resumes from its last checkpoint; results at or below the last logged epoch are dropped
(and counted), so MLflow never holds an epoch twice.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from analysis.store import Tag
from orchestrator.tracking import StudyTracker
from orchestrator.tune_run import SEARCH_PARAMS, envelope_trial
from workers.config import TrialConfig
from workers.results import (DIVERGED, EPOCH, FAILED, NON_METRIC_KEYS, PROBES, STATUS,
                             STOPPED, WORKER_STATUSES)

# Keys Tune adds to every result; the rest of a result is what the worker reported
# (`workers.results`).
TUNE_KEYS = frozenset(AUTO_RESULT_KEYS) | {
    "done", "trial_id", "should_checkpoint", "experiment_tag", "timesteps_total",
    "episodes_total", "training_iteration", "time_this_iter_s", "time_total_s"}


@dataclass
class Outcome:
    """How a trial ended, for the summary and the exit status."""

    name: str
    trial_id: str
    status: str                 # one of workers.results.END_STATUSES
    run_id: str | None          # the tracker's handle until `resolve_run_ids`
    value: float | None = None  # the study metric in the trial's last result
    error: str | None = None


def trial_config_of(trial) -> TrialConfig:
    """The TrialConfig a Tune trial runs (its config is the trainable's envelope)."""
    return envelope_trial(trial.config)


def end_status(last_result: dict) -> str:
    """finished/diverged from the worker's last report; no final status means a scheduler
    stopped the trial early."""
    status = last_result.get(STATUS)
    return status if status in WORKER_STATUSES else STOPPED


def result_epoch(result: dict) -> int:
    """The epoch a result reports (Tune's iteration count where a worker gave none)."""
    return int(result.get(EPOCH, result.get("training_iteration", 0)))


def scalar_metrics(result: dict) -> dict[str, float]:
    """The worker's numeric scalars in a result (booleans, strings, dicts left out)."""
    return {key: value for key, value in result.items()
            if key not in TUNE_KEYS and key not in NON_METRIC_KEYS
            and isinstance(value, numbers.Real) and not isinstance(value, bool)}


def metric_value(result: dict, metric: str | None) -> float | None:
    value = result.get(metric) if metric else None
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return float(value)
    return None


class MlflowTrialLogger(Callback):
    """Logs trials to their MLflow child runs (see module docstring).

    storage_root: the Tune storage path as given (local directory or URI); checkpoint
    locations are recorded under it so a later `resweep run` can resume from them.
    """

    def __init__(self, tracker: StudyTracker, storage_root: str, metric: str | None = None):
        self.tracker = tracker
        self.storage_root = storage_root.rstrip("/")
        self.metric = metric
        self.runs: dict[str, str] = {}          # Tune trial id -> run handle (tracker)
        self.last_epoch: dict[str, int] = {}    # Tune trial id -> last epoch in MLflow
        self.dropped: dict[str, int] = {}       # Tune trial id -> duplicate results dropped
        self.outcomes: dict[str, Outcome] = {}  # Tune trial id -> how it ended
        self.workers: dict[str, tuple] = {}     # Tune trial id -> (host, pid) last logged

    # Tune hooks -------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:  # a restart after a worker died: same run
            return
        config = trial_config_of(trial)
        tags = {Tag.TUNE_TRIAL: trial.trial_id}
        if SEARCH_PARAMS in trial.config:
            tags[Tag.SEARCH_PARAMS] = _json(trial.config[SEARCH_PARAMS])
        run_id, last_epoch = self.tracker.start_trial(config, tags)
        self.runs[trial.trial_id] = run_id
        self.last_epoch[trial.trial_id] = last_epoch
        self.dropped[trial.trial_id] = 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        epoch = result_epoch(result)
        if epoch <= self.last_epoch[trial.trial_id]:
            self.dropped[trial.trial_id] += 1
            return
        tags = {Tag.LAST_EPOCH: str(epoch)}
        worker = (result.get("hostname"), result.get("pid"))
        if worker != self.workers.get(trial.trial_id):  # where the trial runs (changes
            self.workers[trial.trial_id] = worker       # when a restart moved it)
            tags.update({Tag.WORKER_HOST: str(worker[0]), Tag.WORKER_PID: str(worker[1])})
        checkpoint_dir = result.get("checkpoint_dir_name")
        if checkpoint_dir:
            tags[Tag.CHECKPOINT] = "/".join(
                (self.storage_root, trial.storage.experiment_dir_name,
                 trial.storage.trial_dir_name, checkpoint_dir))
        self.tracker.log_epoch(run_id, scalar_metrics(result), epoch, tags)
        self.last_epoch[trial.trial_id] = epoch

    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self.tracker.set_trial_tag(run_id, Tag.WORKER_FAILURES, str(trial.num_failures))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status = end_status(last)
        self._end(trial, status, probes=last.get(PROBES),
                  value=metric_value(last, self.metric))

    def on_trial_error(self, iteration, trials, trial, **info):
        error = error_text(trial) or "the trial failed (no error text recorded)"
        self._end(trial, FAILED, error=str(error),
                  value=metric_value(trial.last_result or {}, self.metric))

    def resolve_run_ids(self) -> None:
        """The outcomes' run handles -> MLflow run ids (once the writer has written the
        trial starts; `StudyTracker.run_id`)."""
        for outcome in self.outcomes.values():
            if outcome.run_id is not None:
                outcome.run_id = self.tracker.run_id(outcome.run_id)

    # helpers ------------------------------------------------------------------------
    def _end(self, trial, status: str, *, probes=None, value=None, error=None) -> None:
        run_id = self.runs.get(trial.trial_id)
        config = trial_config_of(trial)
        if run_id is not None:
            tags = {Tag.WORKER_FAILURES: str(trial.num_failures),
                    Tag.DUPLICATE_RESULTS: str(self.dropped[trial.trial_id])}
            if status == DIVERGED:
                tags[Tag.DIVERGED_EPOCH] = str(self.last_epoch[trial.trial_id])
            if error:
                tags[Tag.ERROR] = _last_line(error)[:500]
            self.tracker.end_trial(run_id, status, probes=probes, tags=tags, error=error)
        self.outcomes[trial.trial_id] = Outcome(config.name, config.trial_id, status, run_id,
                                                value, _last_line(error) if error else None)


def error_text(trial) -> str | None:
    """What the trial's failures left: Tune writes them to the driver-side copy of the
    trial folder first (the storage copy is synced later)."""
    if trial.error_file and os.path.exists(trial.error_file):
        with open(trial.error_file, encoding="utf-8", errors="replace") as f:
            return f.read()
    return trial.get_error()


def _last_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
