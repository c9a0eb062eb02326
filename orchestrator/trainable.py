"""The function trainable: one trial inside a Ray worker process.

Tune calls `run_trial(config)` with config = {"trial": TrialConfig.to_dict(),
"resume_from": checkpoint path or URI (optional), "search_params": {...} (search only)}.
It rebuilds the TrialConfig, restores the newest checkpoint (Tune's own after a worker
died, else `resume_from` left by an interrupted earlier `resweep run`), and runs
`workers.train_trial` with a report adapter that hands each epoch to Tune with its
checkpoint. Nothing here talks to MLflow: the driver logs what Tune receives.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import traceback

from workers.config import TrialConfig


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

    trial = TrialConfig.from_dict(config["trial"])
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    trial = resolve_threads(trial, cpus)
    checkpoint_dir = tempfile.mkdtemp(prefix=f"resweep-{trial.trial_id}-")
    try:
        restore_checkpoint(checkpoint_dir, config.get("resume_from"))
        result = train_trial(trial, make_report(checkpoint_dir), checkpoint_dir=checkpoint_dir)
    except Exception as err:  # noqa: BLE001 - every failure must reach the driver intact
        # Ray copies and pickles the exception on its way to the driver; one with a custom
        # __init__ breaks that and the error text is lost. A RuntimeError carrying the
        # formatted traceback always arrives.
        raise TrialError(f"trial {trial.name} ({trial.trial_id}) failed:\n"
                         f"{traceback.format_exc()}{type(err).__name__}: {err}") from None
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if getattr(result, "status", "finished") not in ("finished", "diverged"):
        # The worker caught an error and returned it: make it a Tune failure so the trial
        # is retried from its checkpoint, then recorded as failed.
        raise TrialError(f"trial {trial.name} ({trial.trial_id}) failed: "
                         f"{getattr(result, 'error', None) or result.status}")
