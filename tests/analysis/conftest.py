"""Fixtures of the analysis tests: small but real MLflow stores written the way `resweep run`
writes them (the MLflow conventions of the team contract).

Experiment = study name (tag mlflow.experimentKind); one parent run per `resweep run`
(tags resweep.kind=study, resweep.study, resweep.study_hash, resweep.git_commit,
resweep.version; artifact study.yaml); one nested child run per trial (tag
mlflow.parentRunId, run name = trial name, tags resweep.kind=trial, resweep.trial_id,
resweep.name, resweep.seed, resweep.status; params = flattened TrialConfig with dotted keys;
per-epoch metrics with step = epoch via log_batch; final params/macs; artifacts probes.json
and trial.json). The numbers are made up with a known answer.

Session fixtures hand out the pieces (module-scoped stores use them):

    uri = new_store(root)                                  an empty, migrated SQLite store
    record_study(uri, root, study, trials, run_started=..., parent_status=...) -> parent id
    degradation_trials(seeds=3, depths=(8, 14, 20), ...)    trials with a known answer
    fake_trial(depth, residual, seed, train_error, test_error, ...)   one FakeTrial
    trial_config(study, fake) -> the TrialConfig `resweep run` would log for it
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.store import MLFLOW_STATUS
from models.config import ModelConfig
from orchestrator.tracking import trial_params
from workers.config import DataConfig, TrainConfig, TrialConfig


@dataclass
class FakeTrial:
    """One trial to write: its model, seed, final errors (fractions) and outcome."""

    depth: int
    residual: bool
    seed: int
    train_error: float
    test_error: float
    shortcut: str = "A"
    status: str = "finished"
    epochs: int = 4
    probes: bool = True
    test_every: int = 1     # like train.eval_every: test_error only every k epochs and last
    width: float = 0.5
    lr: float = 0.1


def _trial_config(study: str, fake: FakeTrial) -> TrialConfig:
    model = ModelConfig(family="cifar", depth=fake.depth, residual=fake.residual,
                        shortcut=fake.shortcut if fake.residual else "A", width=fake.width,
                        in_channels=1, image_size=28)
    kind = "resnet" if fake.residual else "plain"
    shortcut = f"-{model.shortcut}" if fake.residual else ""
    return TrialConfig(name=f"{kind}-{fake.depth}{shortcut}-w{fake.width:g}-s{fake.seed}",
                       model=model,
                       data=DataConfig(train_size=2048, val_size=512, test_size=1024),
                       train=TrainConfig(epochs=fake.epochs, lr=fake.lr), seed=fake.seed,
                       study=study)


def _fake_probes(depth: int, residual: bool, seed: int) -> dict:
    """Layer responses: plain ~1 and flat, residual smaller and smaller with depth (Fig. 7).
    Gradient norms: plain vanish towards the input as depth grows, residual stay flat."""
    rng = random.Random(depth * 1000 + residual * 100 + seed)
    blocks = (depth - 2) // 2
    layers = {"stem.conv": 1.0}
    for b in range(blocks):
        for c in (1, 2):
            base = 0.35 * math.sqrt(20 / depth) if residual else 1.0
            layers[f"stage{b * 3 // blocks + 1}.block{b}.conv{c}"] = base * (1 + 0.1 * rng.random())
    grads = {}
    for b in range(blocks):
        decay = 1.0 if residual else 0.8 ** (blocks - b)
        grads[f"block{b}"] = 0.05 * decay * (1 + 0.2 * rng.random())
    return {"layer_responses": layers, "gradient_norms": grads}


def _record_study(tracking_uri: str, root: Path, study: str, trials: list[FakeTrial],
                    run_started: str = "20261126-120000", parent_status: str = "FINISHED") -> str:
    """Write one `resweep run` of `study` with `trials` into the store; returns the parent
    run id. Calling it again adds another parent run (a rerun) to the same experiment."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        eid = client.create_experiment(
            study, artifact_location=(root / "artifacts" / study).as_uri(),
            tags={"mlflow.experimentKind": "custom_model_development"})
    else:
        eid = experiment.experiment_id
    parent = client.create_run(eid, run_name=f"{study}-{run_started}", tags={
        "resweep.kind": "study", "resweep.study": study, "resweep.study_hash": "0" * 12,
        "resweep.git_commit": "deadbeef", "resweep.version": "0.1.0",
        "resweep.status": "running"})
    pid = parent.info.run_id
    client.log_text(pid, f"name: {study}\ndesign: grid\nspace:\n  residual: [false, true]\n",
                    "study.yaml")
    for fake in trials:
        _write_trial(client, eid, pid, study, fake, root)
        time.sleep(0.002)  # distinct start times, as real trials have
    client.set_tag(pid, "resweep.status", "finished" if parent_status == "FINISHED" else "failed")
    client.set_terminated(pid, parent_status)
    return pid


def _write_trial(client: MlflowClient, eid: str, pid: str, study: str, fake: FakeTrial,
                 root: Path) -> None:
    config = _trial_config(study, fake)
    run = client.create_run(eid, run_name=config.name, tags={
        "mlflow.parentRunId": pid, "resweep.kind": "trial", "resweep.trial_id": config.trial_id,
        "resweep.name": config.name, "resweep.seed": str(fake.seed), "resweep.study": study,
        "resweep.status": "running"})
    rid = run.info.run_id
    params = trial_params(config)  # exactly the params `resweep run` logs
    now = int(time.time() * 1000)
    # The driver sends one log_batch per epoch; one request for all of them reads back the
    # same (same keys, steps and values) and keeps the fixture fast.
    metrics = [Metric(k, v, now + epoch, epoch) for epoch in range(1, fake.epochs + 1)
               for k, v in _epoch_metrics(fake, epoch).items()]
    metrics += [Metric("params", 1000.0 * fake.depth, now, fake.epochs),
                Metric("macs", 1e5 * fake.depth, now, fake.epochs)]
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.log_dict(rid, config.to_dict(), "trial.json")
    if fake.probes and fake.status == "finished":
        client.log_dict(rid, _fake_probes(fake.depth, fake.residual, fake.seed), "probes.json")
    client.set_tag(rid, "resweep.status", fake.status)
    client.set_terminated(rid, MLFLOW_STATUS[fake.status])


def _epoch_metrics(fake: FakeTrial, epoch: int) -> dict[str, float]:
    """Errors decay from 0.9 to the trial's final values over its epochs."""
    fraction = 1 - (1 - epoch / fake.epochs) ** 2          # 0 -> 1 at the last epoch
    train = 0.9 + (fake.train_error - 0.9) * fraction
    test = 0.9 + (fake.test_error - 0.9) * fraction
    metrics = {"epoch": float(epoch), "iteration": 16.0 * epoch, "lr": 0.1 / epoch,
               "train_loss": 2.3 * train, "train_error": train, "val_loss": 2.3 * test,
               "val_error": test + 0.002, "images_per_s": 900.0, "elapsed_s": 3.0 * epoch}
    if epoch % fake.test_every == 0 or epoch == fake.epochs:
        metrics.update(test_loss=2.3 * test, test_error=test)
    return metrics


def _degradation_trials(seeds: int = 3, noise: float = 0.004, shortcuts: tuple = ("A",),
                        depths: tuple = (8, 14, 20), probes: bool = True, test_every: int = 1,
                        train_error: Callable[[bool, int], float] | None = None) -> list[FakeTrial]:
    """A degradation study with a known answer: plain training error 10% at depth 8,
    10.2% at 14 (within noise) and 16% at 20 (onset at 20); residual nets 9.5%, 9%, 8.5%."""
    def default_error(residual: bool, depth: int) -> float:
        plain = {8: 0.10, 14: 0.102, 20: 0.16, 26: 0.2}
        resnet = {8: 0.095, 14: 0.09, 20: 0.085, 26: 0.083}
        return (resnet if residual else plain)[depth]
    error = train_error or default_error
    rng = random.Random(7)
    trials = []
    for residual in (False, True):
        for depth in depths:
            for shortcut in (shortcuts if residual else ("A",)):
                offset = {"A": 0.0, "B": -0.002, "C": -0.003}[shortcut]
                for seed in range(seeds):
                    train = error(residual, depth) + offset + rng.uniform(-noise, noise)
                    trials.append(FakeTrial(depth, residual, seed, train, train + 0.03,
                                            shortcut=shortcut, probes=probes,
                                            test_every=test_every))
    return trials


@pytest.fixture(scope="session")
def new_store(tmp_path_factory):
    """new_store(root) -> the tracking URI of a fresh, empty SQLite store in `root`.

    MLflow migrates a new database in ~3-7 s on 2 busy cores; the migrated empty database is
    made once per test session and copied (a copy is a valid, current store)."""
    template: list[Path] = []

    def new(root: Path) -> str:
        if not template:
            db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
            MlflowClient(f"sqlite:///{db}").search_experiments()
            template.append(db)
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(template[0], root / "mlflow.db")
        return f"sqlite:///{root / 'mlflow.db'}"
    return new


@pytest.fixture(scope="session")
def record_study():
    """record_study(uri, root, study, trials, run_started=..., parent_status=...): one
    `resweep run` of `study` in the store; returns the parent run id (again: a rerun)."""
    return _record_study


@pytest.fixture(scope="session")
def degradation_trials():
    """degradation_trials(seeds=3, noise=0.004, shortcuts=("A",), depths=(8, 14, 20), ...)."""
    return _degradation_trials


@pytest.fixture(scope="session")
def fake_trial():
    """The FakeTrial class: fake_trial(depth, residual, seed, train_error, test_error, ...)."""
    return FakeTrial


@pytest.fixture(scope="session")
def trial_config():
    """trial_config(study, fake) -> the TrialConfig a FakeTrial is recorded with."""
    return _trial_config
