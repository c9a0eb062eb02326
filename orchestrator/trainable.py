"""The function trainable: one trial inside a Ray worker process, and the Tune config
envelope it receives.

Tune calls `run_trial(config)` with the envelope `trial_envelope` builds (the searchers
of `orchestrator.search` hand it out; the Tune callbacks read it back):
{TRIAL: TrialConfig.to_dict(), SEARCH_PARAMS: {...} (search only), RESUME_FROM:
checkpoint path or URI (optional)}. It rebuilds the TrialConfig, restores the newest
checkpoint (Tune's own after a worker died, else the one an interrupted earlier `resweep
run` left), and runs `workers.train_trial` with a report adapter that hands each epoch to
Tune with its checkpoint. Nothing here talks to MLflow: the driver logs what Tune receives.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import traceback
from typing import Any

from workers.config import TrialConfig

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
