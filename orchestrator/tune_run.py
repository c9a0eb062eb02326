"""How a study becomes a Ray Tune run: the config envelope each trial receives, the
function trainable Tune runs in a Ray worker, and the Tuner the driver assembles around it.

The envelope. Tune calls `run_trial(config)` with the envelope `trial_envelope` builds
(the searchers of `orchestrator.search` hand it out; the Tune callbacks read it back):
{TRIAL: TrialConfig.to_dict(), SEARCH_PARAMS: {...} (search only), RESUME_FROM:
checkpoint path or URI (optional)}.

The trainable (in the worker). `run_trial` rebuilds the TrialConfig, restores the newest
checkpoint (Tune's own after a worker died, else the one an interrupted earlier `resweep
run` left), and runs `workers.train_trial` with a report adapter that hands each epoch to
Tune with its checkpoint. Nothing here talks to MLflow: the driver logs what Tune receives.

The Tuner (in the driver). `run_tune(job, callbacks)`: the trainable with its resources,
the searcher, the scheduler, and the run config (storage, failure handling, callbacks).
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

import dataclasses
import logging
import os
import re
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from typing import Any

from workers.config import TrialConfig

# ---- the envelope ----------------------------------------------------------------------

# The keys of a Tune trial's config.
TRIAL = "trial"                  # the TrialConfig as a dict
SEARCH_PARAMS = "search_params"  # the searcher's flat proposal {key: value} (search only)
RESUME_FROM = "resume_from"      # checkpoint of an interrupted earlier run to continue


def trial_envelope(trial: TrialConfig, *, search_params: dict[str, Any] | None = None,
                   resume_from: str | None = None) -> dict[str, Any]:
    """The config Tune hands `run_trial` for this trial."""
    config: dict[str, Any] = {TRIAL: trial.to_dict()}
    if search_params is not None:
        config[SEARCH_PARAMS] = search_params
    if resume_from:
        config[RESUME_FROM] = resume_from
    return config


def envelope_trial(config: dict[str, Any]) -> TrialConfig:
    """The TrialConfig an envelope carries."""
    return TrialConfig.from_dict(config[TRIAL])


def envelope_name(config: dict[str, Any]) -> str:
    """The trial's name, without rebuilding its TrialConfig."""
    return config[TRIAL]["name"]


# ---- the trainable (runs in a Ray worker) ----------------------------------------------

class TrialError(RuntimeError):
    """A trial failed in its worker; the message holds the worker's traceback."""


def resolve_threads(trial: TrialConfig, cpus: float) -> TrialConfig:
    """Pin torch's thread count to the CPUs Ray gave the trial (unless the study set it):
    two trials on two cores must not each start one thread per core."""
    if trial.train.threads is not None:
        return trial
    train = dataclasses.replace(trial.train, threads=max(1, int(cpus)))
    return trial.replace(train=train)


def make_report(checkpoint_dir: str):
    """The `report(metrics, checkpoint_path)` that workers call once per epoch."""
    from ray import tune

    def report(metrics: dict, checkpoint_path: str | None = None) -> None:
        checkpoint = None
        if checkpoint_path:
            # Workers pass the checkpoint file or its folder; Tune persists the folder.
            folder = checkpoint_path if os.path.isdir(checkpoint_path) \
                else os.path.dirname(checkpoint_path)
            checkpoint = tune.Checkpoint.from_directory(folder or checkpoint_dir)
        tune.report(dict(metrics), checkpoint=checkpoint)

    return report


def restore_checkpoint(into: str, resume_from: str | None) -> None:
    """Copy the checkpoint to resume from (if any) into the folder `into`."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None and resume_from:
        checkpoint = tune.Checkpoint(resume_from)
    if checkpoint is not None:
        checkpoint.to_directory(into)


def run_trial(config: dict) -> None:
    """Tune's entry point for one trial (see module docstring)."""
    from ray import tune

    from workers import train_trial

    trial = envelope_trial(config)
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    trial = resolve_threads(trial, cpus)
    checkpoint_dir = tempfile.mkdtemp(prefix=f"resweep-{trial.trial_id}-")
    try:
        restore_checkpoint(checkpoint_dir, config.get(RESUME_FROM))
        # A trial ends finished or diverged; any other failure raises (handled below).
        train_trial(trial, make_report(checkpoint_dir), checkpoint_dir=checkpoint_dir)
    except Exception as err:  # noqa: BLE001 - every failure must reach the driver intact
        # Ray copies and pickles the exception on its way to the driver; one with a custom
        # __init__ breaks that and the error text is lost. A RuntimeError carrying the
        # formatted traceback always arrives.
        raise TrialError(f"trial {trial.name} ({trial.trial_id}) failed:\n"
                         f"{traceback.format_exc()}{type(err).__name__}: {err}") from None
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


# ---- the Tuner (runs in the driver) ----------------------------------------------------

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
