"""Fixtures of the analysis tests: MLflow stores written by the real tracking code.

Every store is written through `orchestrator.tracking.StudyTracker` (start_study,
start_trial, log_epoch, end_trial, end_study), the calls `resweep run`'s driver makes, so
the layout the analysis reads is the one the writer makes, not a copy of it. Only the
trials are made up (errors with a known answer, fake probes); they reach MLflow as a
worker's results would: one log_epoch per epoch (the last with the final `params` and
`macs`), then end_trial with the status, probes and the callback's tags. One fixture-only
step: each parent run is renamed to the `<study>-<YYYYmmdd-HHMMSS>` of a fixed clock
(`run_started`), so tests can name parents and two runs made in one second differ.

One store serves the whole session (`analysis_store`: every study below, written once in
~10 s); a test that writes to a store (a report logged to MLflow) takes `copy_store` of it.

    analysis_store                     AnalysisStore(uri, root, parents={study: [ids]})
    copy_store(store, root) -> uri     a private copy (database and artifacts)
    record_study(uri, study, trials, run_started=..., parent_status=...) -> parent run id
    degradation_trials(seeds=3, depths=(8, 14, 20), ...)    trials with a known answer
    fake_trial(depth, residual, seed, train_error, test_error, ...)   one FakeTrial
    trial_config(study, fake) -> the TrialConfig `resweep run` would log for it
    tiny_ablation / tiny_grid / tiny_search   TinyStudy: a real tiny study per design, run
                                              and reported through the CLI (see below)
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from analysis.store import Tag, trials_tag
from models.config import ModelConfig
from orchestrator.tracking import StudyTracker
from workers.config import DataConfig, TrainConfig, TrialConfig
from workers.results import DIVERGED, END_STATUSES, FAILED, FINISHED

# The studies of the session store (tests/analysis/test_*.py name them).
REPORT_FULL, REPORT_MINIMAL, REPORT_SEARCH = "report-full", "report-minimal", "report-search"
RUNS_STUDY, UI_STUDY = "runs-test", "ui-test"


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


def _record_study(tracking_uri: str, study: str, trials: list[FakeTrial],
                  run_started: str = "20261126-120000", parent_status: str = FINISHED) -> str:
    """One `resweep run` of `study` with `trials`, written through StudyTracker; returns the
    parent run id. Calling it again is a rerun: a new parent unless the previous one was
    left unfinished, trials already done are skipped by the caller (as `resweep run` does)."""
    tracker = StudyTracker.open(tracking_uri, study)
    text = f"name: {study}\ndesign: grid\nspace:\n  residual: [false, true]\n"
    tracker.start_study(study, study_hash="0" * 12, study_text=text, version="0.1.0")
    counts = dict.fromkeys(END_STATUSES, 0)
    for fake in trials:
        _write_trial(tracker, study, fake)
        counts[fake.status] = counts.get(fake.status, 0) + 1
        time.sleep(0.002)  # distinct start times, as real trials have
    tracker.end_study(parent_status, {trials_tag(s): str(counts[s]) for s in END_STATUSES})
    assert tracker.close_writer(timeout=60)  # no writer was started: written already
    tracker.client.update_run(tracker.parent_run_id, name=f"{study}-{run_started}")
    return tracker.parent_run_id


def _write_trial(tracker: StudyTracker, study: str, fake: FakeTrial) -> None:
    """What the driver's Tune callback does for one trial (orchestrator.tune_callbacks)."""
    config = _trial_config(study, fake)
    run_id, _ = tracker.start_trial(config)
    for epoch in range(1, fake.epochs + 1):
        metrics = _epoch_metrics(fake, epoch)
        if epoch == fake.epochs:  # the last report carries the model's size
            metrics.update(params=1000.0 * fake.depth, macs=1e5 * fake.depth)
        tracker.log_epoch(run_id, metrics, epoch, {Tag.LAST_EPOCH: str(epoch)})
    tags = {Tag.WORKER_FAILURES: "0", Tag.DUPLICATE_RESULTS: "0"}
    if fake.status == DIVERGED:
        tags[Tag.DIVERGED_EPOCH] = str(fake.epochs)
    probes = (_fake_probes(fake.depth, fake.residual, fake.seed)
              if fake.probes and fake.status == FINISHED else None)
    error = "RuntimeError: made up for the test" if fake.status == FAILED else None
    tracker.end_trial(run_id, fake.status, probes=probes, tags=tags, error=error)


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


@dataclass
class AnalysisStore:
    """A store of the session: its tracking URI, folder, and each study's parent run ids
    (oldest first)."""

    uri: str
    root: Path
    parents: dict[str, list[str]] = field(default_factory=dict)


def _session_studies(uri: str) -> dict[str, list[str]]:
    """Every study the analysis tests read (see each test module for what it checks)."""
    parents: dict[str, list[str]] = {}

    def record(study, trials, **kwargs):
        parents.setdefault(study, []).append(_record_study(uri, study, trials, **kwargs))

    # test_report: plain + residual A/B/C at depths 8/20, 2 seeds, probes, one diverged
    # plain-26; plain + residual A at 8/20, one seed, no probes, test error at the end only;
    # a search-like study, every trial its own configuration (lr varies), some stopped.
    full = _degradation_trials(seeds=2, shortcuts=("A", "B", "C"), depths=(8, 20))
    full.append(FakeTrial(26, False, 0, 0.9, 0.9, status="diverged"))
    record(REPORT_FULL, full)
    record(REPORT_MINIMAL, _degradation_trials(seeds=1, depths=(8, 20), probes=False,
                                               test_every=4))
    record(REPORT_SEARCH, [
        FakeTrial(depth, residual, 0, 0.1 + lr, 0.13 + lr, shortcut=shortcut, lr=lr,
                  probes=False, status="stopped" if lr > 0.2 else "finished")
        for depth, residual, shortcut, lr in [(8, True, "A", 0.05), (20, True, "B", 0.12),
                                              (8, False, "A", 0.25), (20, False, "A", 0.08),
                                              (14, True, "C", 0.3)]])
    # test_runs: two `resweep run`s; the first leaves plain-14 seed 0 failed and resnet-14
    # seed 1 interrupted, the second reruns exactly those two, which finish.
    first = _degradation_trials(seeds=2, depths=(8, 14))
    first[2].status = "failed"           # plain-14 seed 0
    first[7].status = "interrupted"      # resnet-14 seed 1
    record(RUNS_STUDY, first, run_started="20261126-100000", parent_status=FAILED)
    record(RUNS_STUDY, [FakeTrial(14, False, 0, 0.101, 0.131),
                        FakeTrial(14, True, 1, 0.091, 0.121)], run_started="20261126-110000")
    # test_ui: plain + residual at depths 8/14, one seed.
    record(UI_STUDY, _degradation_trials(seeds=1, depths=(8, 14), probes=False))
    return parents


@pytest.fixture(scope="session")
def analysis_store(tmp_path_factory) -> AnalysisStore:
    """The session's store with every study of `_session_studies`. Read only: a test that
    writes (e.g. a report logged to MLflow) works on `copy_store(analysis_store, ...)`."""
    root = tmp_path_factory.mktemp("analysis-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return AnalysisStore(uri, root, _session_studies(uri))


def _copy_store(store: AnalysisStore, root: Path) -> str:
    """A copy of the store's database and artifacts in `root` (which must not exist); the
    artifact locations recorded in the database are moved to the copy's.

    The copy has the store's run ids, and MLflow caches each run's artifact location by
    run id for the whole process: write to the copy's artifacts from another process
    (`resweep` as a subprocess) and read them from disk, or they land in the original's."""
    shutil.copytree(store.root, root)
    old, new = store.root.resolve().as_uri(), root.resolve().as_uri()
    with sqlite3.connect(root / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = "
                   "replace(artifact_location, ?, ?)", (old, new))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="session")
def copy_store():
    """copy_store(store, root) -> the tracking URI of a private copy of `store` in `root`."""
    return _copy_store


@pytest.fixture(scope="session")
def record_study():
    """record_study(uri, study, trials, run_started=..., parent_status=...): one
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


# ---- tiny real studies, one per design (`resweep run` + `resweep report`) ---------------
# Real trials: Fashion-MNIST (384 training images), CIFAR nets of width 0.25 (0.5 as the
# grid's second width), one epoch (two for the search, so ASHA can stop some). Each
# fixture runs the CLI of this checkout in a subprocess (its own embedded Ray), once per
# session; run the module that uses them under the heavy lock.

TINY_DATA = {"dataset": "fashion-mnist", "train_size": 384, "val_size": 128, "test_size": 256,
             "augment": False}
TINY_TRAIN = {"recipe": "cosine", "epochs": 1, "batch_size": 32, "lr": 0.1, "threads": 1}
TINY_STUDIES = {
    "ablation": {"name": "tiny-shortcuts", "data": TINY_DATA, "train": TINY_TRAIN,
                 "model": {"family": "cifar", "block": "basic", "width": 0.25},
                 "design": "ablation",
                 "baseline": {"depth": 8, "residual": True, "shortcut": "A"},
                 "vary": {"shortcut": ["A", "B", "C"], "residual": [False]},
                 "repeats": 2, "resources": {"cpu": 1}},
    "grid": {"name": "tiny-width", "data": TINY_DATA, "train": TINY_TRAIN,
             "model": {"family": "cifar", "block": "basic", "shortcut": "A"},
             "design": "grid",
             "space": {"width": [0.25, 0.5], "depth": [8, 14], "residual": [False, True]},
             "repeats": 1, "resources": {"cpu": 1}},
    "search": {"name": "tiny-search", "data": TINY_DATA,
               "train": {**{k: v for k, v in TINY_TRAIN.items() if k != "lr"}, "epochs": 2},
               "model": {"family": "cifar", "block": "basic", "residual": True, "width": 0.25},
               "design": "search",
               "space": {"depth": {"choice": [8, 14]}, "shortcut": {"choice": ["A", "B"]},
                         "train.lr": {"float": {"low": 0.01, "high": 0.3, "log": True}}},
               "search": {"algorithm": "optuna-tpe", "num_samples": 6, "metric": "val_error",
                          "mode": "min", "max_concurrent": 2, "seed": 0,
                          "scheduler": {"asha": {"max_t": 2, "grace_period": 1,
                                                 "reduction_factor": 2}}},
               "repeats": 1, "resources": {"cpu": 1}},
}


@dataclass
class TinyStudy:
    """A tiny study run and reported: its file, store, report folder and report output."""

    name: str
    path: Path
    uri: str
    report_dir: Path
    report_out: str
    ui_url: str = "http://127.0.0.1:5123"


def _resweep_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _tiny_study(root: Path, design: str) -> TinyStudy:
    import yaml

    spec = TINY_STUDIES[design]
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run = _resweep_cli("run", str(path), "--tracking-uri", uri, "--storage",
                       str(root / "ray_results"), "--quiet", cwd=root)
    assert run.returncode == 0, run.stdout + run.stderr
    study = TinyStudy(spec["name"], path, uri, root / "report", "")
    report = _resweep_cli("report", str(path), "--tracking-uri", uri, "--out",
                          str(study.report_dir), "--ui-url", study.ui_url, cwd=root)
    assert report.returncode == 0, report.stdout + report.stderr
    study.report_out = report.stdout
    return study


@pytest.fixture(scope="session")
def tiny_ablation(tmp_path_factory) -> TinyStudy:
    """A shortcuts.yaml-style ablation: resnet-8 A baseline, B, C and plain, 2 seeds."""
    return _tiny_study(tmp_path_factory.mktemp("tiny-ablation"), "ablation")


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory) -> TinyStudy:
    """A width.yaml-style grid: width 0.25/0.5 x depth 8/14 x plain/residual, 1 seed."""
    return _tiny_study(tmp_path_factory.mktemp("tiny-grid"), "grid")


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory) -> TinyStudy:
    """An Optuna TPE search of 6 trials with ASHA over depth, shortcut and lr."""
    return _tiny_study(tmp_path_factory.mktemp("tiny-search"), "search")
