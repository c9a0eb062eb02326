"""Ray Tune assembly: the trainable with its resources, the searcher, the scheduler, and
the run config (storage, failure handling, callbacks).

Choices, and why:
- `reuse_actors=True`: every trial of a study asks the same resources and the function
  trainable keeps no state between trials, so one worker process runs trial after trial
  (a new process and `import torch` cost 3.5-5 s per trial otherwise).
- `FailureConfig(max_failures)`: a trial whose worker process dies is restarted from its
  last checkpoint (the worker checkpoints every epoch), up to max_failures times.
- `CheckpointConfig(num_to_keep=2)`: the latest checkpoint is what a restart needs; one
  more covers a crash while the newest is being registered.
- Tune's own loggers and console output are off: the MLflow callback is the record and
  `ProgressDisplay` the console.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from orchestrator.trainable import envelope_name

DEFAULT_MAX_FAILURES = 2


@dataclass(frozen=True)
class TuneJob:
    """Everything `run_tune` needs besides the callbacks."""

    experiment_name: str       # folder under the storage path
    storage_path: str          # absolute local path or URI
    cpu: float                 # per trial
    gpu: float                 # per trial (fractions pack trials on one GPU)
    searcher: object           # a Tune Searcher (list or Optuna, maybe limited)
    num_samples: int           # trials the searcher may start
    scheduler: object | None = None
    max_failures: int = DEFAULT_MAX_FAILURES
    reuse_actors: bool = True


def _dirname(trial) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", envelope_name(trial.config))[:80]
    return f"{name}_{trial.trial_id}"


def build_tuner(job: TuneJob, callbacks: list):
    from ray import tune

    from orchestrator.trainable import run_trial

    # Tune's JSON/CSV/TensorBoard result files: MLflow already records every result (and
    # Tune's end-of-run analysis, which would read them, is not used).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # "Wrote ... result files" 
    # num_to_keep makes Tune snapshot its experiment state after checkpoints; with one
    # checkpoint per epoch of short trials it warns about that on every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A diverged trial's last result has no validation metrics; Tune would abort the whole
    # experiment over the missing search metric. Schedulers and the searcher skip it.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # The new output engine prints its tables even at verbose=0; the legacy one is silent.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Ctrl-C should raise KeyboardInterrupt here (the run command records the interruption
    # and exits 130), not be swallowed by Tune's graceful-stop handler.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    trainable = tune.with_resources(run_trial, {"cpu": job.cpu, "gpu": job.gpu})
    tune_config = tune.TuneConfig(
        search_alg=job.searcher, scheduler=job.scheduler, num_samples=job.num_samples,
        reuse_actors=job.reuse_actors,
        trial_name_creator=lambda trial: envelope_name(trial.config),
        trial_dirname_creator=_dirname)
    run_config = tune.RunConfig(
        name=job.experiment_name, storage_path=job.storage_path, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=job.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=0)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def run_tune(job: TuneJob, callbacks: list):
    """Run the trials; returns Tune's ResultGrid (failed trials do not raise)."""
    return build_tuner(job, callbacks).fit()
