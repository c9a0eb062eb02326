"""Fixtures of the `resweep run` tests: tiny studies, reading runs back from MLflow, the
`resweep` command as a subprocess.

The studies train real networks on the first 1,024 Fashion-MNIST training images: the
fully-connected toy (`mlp`, ~0.1 s per epoch) where only bookkeeping is tested, a CIFAR
net of depth 8 at width x0.5 (`small_cnn`, ~1 s per epoch on one core) where a trial must
still be running when a process is killed.

`local_ray` is an in-process Ray (2 CPUs, one per module) for the tests that call the
command in this process; `cluster` is the session's one `ray start --head` (token auth, 2 CPUs) for every test that
runs `resweep run --address`; its Python cannot import this project (`project_free_python`),
so drivers ship the code (`--ship-code`) as a cluster node without the project needs.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis.store import sqlite_path

DATA = {"dataset": "fashion-mnist", "train_size": 1024, "val_size": 256, "test_size": 256,
        "augment": False}
MLP = {"family": "mlp", "hidden": 32}  # depth: given by the space, else 20 blocks
SMALL_CNN = {"family": "cifar", "depth": 8, "width": 0.5}
RESWEEP = str(Path(sys.executable).with_name("resweep"))
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mlp() -> dict:
    """The fully-connected toy model (a study's `model`); copy it to change it."""
    return dict(MLP)


@pytest.fixture(scope="session")
def small_cnn() -> dict:
    """A CIFAR net of depth 8 at width x0.5: slow enough to be caught mid-trial."""
    return dict(SMALL_CNN)


@pytest.fixture
def write_study(tmp_path):
    """write_study(name, *, space, epochs=3, model=mlp, lr=0.02, **extra) -> the path of
    tmp_path/NAME.yaml, a study on the tiny data set (lr=None leaves the learning rate out
    of `train`, for a space that varies it)."""
    def write(name: str, *, space: dict, epochs: int = 3, model: dict | None = None,
              lr: float | None = 0.02, **extra: Any) -> Path:
        train = {"recipe": "cosine", "epochs": epochs, "batch_size": 128}
        if lr is not None:
            train["lr"] = lr
        study = {"name": name, "data": DATA, "model": model or MLP, "train": train,
                 "design": "grid", "space": space, "resources": {"cpu": 1}, **extra}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        return path
    return write


def _client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_recorded(uri: str, study: str) -> bool:
    """Whether a SQLite store holds the study's experiment yet (other stores: assumed).

    Read without MLflow: MLflow creates and migrates a database it opens, and a test that
    polls a store while `resweep run` creates it would migrate it at the same time (one of
    the two then fails with "table ... already exists"). The experiment is created after
    the migration, so once it is there MLflow opens the store as it is."""
    path = sqlite_path(uri)
    if path is None:
        return True
    if not path.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT 1 FROM experiments WHERE name = ?", (study,)).fetchone()
    except sqlite3.Error:  # no tables yet, or locked by the migration
        return False
    return row is not None


def _study_runs(uri: str, study: str) -> tuple[list, list]:
    if not _experiment_recorded(uri, study):
        return [], []
    client = _client_for(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return [], []
    runs = client.search_runs([experiment.experiment_id], max_results=1000,
                              order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("resweep.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("resweep.kind") == "trial"]
    return parents, children


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return [m.step for m in _client_for(uri).get_metric_history(run_id, key)]


@pytest.fixture(scope="session")
def client_for():
    """client_for(uri) -> an MlflowClient on that store."""
    return _client_for


@pytest.fixture(scope="session")
def study_runs():
    """study_runs(uri, study) -> (parent runs, child runs) of its experiment, oldest first."""
    return _study_runs


@pytest.fixture(scope="session")
def steps():
    """steps(uri, run_id, key) -> the steps (epochs) at which `key` was logged, in order."""
    return _steps


@pytest.fixture(scope="session")
def resweep_timed():
    """resweep_timed(cwd, *args, env=None) -> (CompletedProcess, seconds): the CLI of this
    checkout in a subprocess, with no tracking URI, Ray address or connect time-out
    inherited (the unreachable-service tests set them themselves)."""
    def run(cwd: Path, *args: str, env: dict | None = None):
        import time

        environ = {k: v for k, v in os.environ.items()
                   if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RESWEEP_CONNECT_TIMEOUT")}
        environ.update(PYTHONPATH=str(REPO), **(env or {}))
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd,
                              env=environ, capture_output=True, text=True, timeout=60)
        return done, time.monotonic() - start
    return run


@pytest.fixture(scope="session")
def run_in_subprocess():
    """run_in_subprocess(args, cwd, env={...}, **popen) -> `resweep ARGS` as its own process
    group (so a test can kill all of it), stdout and stderr together as text."""
    def start(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(kwargs.pop("env", {}))
        return subprocess.Popen([RESWEEP, *args], cwd=cwd, env=env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                **kwargs)
    return start


@pytest.fixture(scope="session")
def cluster(ray_head, project_free_python, tmp_path_factory):
    """The session's Ray head; `cluster.address`, `cluster.env` (the token, for drivers)."""
    with ray_head(tmp_path_factory.mktemp("ray-head"), num_cpus=2,
                  python=project_free_python) as head:
        yield head


@pytest.fixture
def resweep_on(cluster, run_in_subprocess, tmp_path):
    """resweep_on(study, uri, *extra, env=None, address=True) -> a `resweep run` driver
    subprocess for the cluster (`--address`, or $RAY_ADDRESS with address=False, as a Ray
    job's entrypoint gets it), with the head's token; `--quiet` and `--ship-code` unless
    quiet=False or ship_code=False."""
    def start(study, uri, *extra, env=None, address=True, quiet=True, ship_code=True):
        args = ["run", str(study), "--tracking-uri", uri,
                "--storage", str(tmp_path / "ray_results")]
        args += ["--address", cluster.address] if address else []
        args += ["--quiet"] if quiet else []
        args += ["--ship-code"] if ship_code else []
        environ = dict(cluster.env, **({} if address else {"RAY_ADDRESS": cluster.address}))
        return run_in_subprocess([*args, *extra], tmp_path, env={**environ, **(env or {})})
    return start


@pytest.fixture(scope="module")
def local_ray():
    """An in-process local Ray for a module (2 CPUs; ~7 s to start): `resweep run` called
    in this process finds it initialised and uses it as it is. Per module, not per session:
    while it is up every in-process `resweep run` uses it, --address or not (the tests of
    an unreachable --address in other modules must not find it)."""
    import ray

    from orchestrator.ray_session import WORKER_ENV

    if ray.is_initialized():  # someone else's Ray: use it, leave it to its owner
        yield
        return
    os.environ.update(WORKER_ENV)  # before the workers are forked from the raylet
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
