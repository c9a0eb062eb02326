"""Helpers for the `resweep run` tests: tiny studies, reading runs back from MLflow, and
a real `ray start --head` cluster on 127.0.0.1.

The studies train real networks on the first 1,024 Fashion-MNIST training images: the
fully-connected toy (`mlp`, ~0.1 s per epoch) where only bookkeeping is tested, a CIFAR
net of depth 8 at width x0.5 (~1 s per epoch on one core) where a trial must still be
running when a process is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from tests.cluster_fixtures import free_port

DATA = {"dataset": "fashion-mnist", "train_size": 1024, "val_size": 256, "test_size": 256,
        "augment": False}
MLP = {"family": "mlp", "hidden": 32}  # depth: given by the space, else 20 blocks
SMALL_CNN = {"family": "cifar", "depth": 8, "width": 0.5}
PER_EPOCH_KEYS = ("epoch", "iteration", "lr", "train_loss", "train_error", "val_loss",
                  "val_error", "test_loss", "test_error", "images_per_s", "elapsed_s")
RESWEEP = str(Path(sys.executable).with_name("resweep"))


def write_study(folder: Path, name: str, *, space: dict, epochs: int = 3,
                model: dict | None = None, lr: float | None = 0.02, **extra: Any) -> Path:
    """A study file with the tiny data set; returns its path (folder/name.yaml).
    lr=None leaves the learning rate out of `train` (for a space that varies it)."""
    train = {"recipe": "cosine", "epochs": epochs, "batch_size": 128}
    if lr is not None:
        train["lr"] = lr
    study = {"name": name, "data": DATA, "model": model or MLP, "train": train,
             "design": "grid", "space": space, "resources": {"cpu": 1}, **extra}
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def study_runs(uri: str, study: str) -> tuple[list, list]:
    """(parent runs, child runs) of a study's experiment, oldest first."""
    client = client_for(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return [], []
    runs = client.search_runs([experiment.experiment_id], max_results=1000,
                              order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("resweep.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("resweep.kind") == "trial"]
    return parents, children


def steps(uri: str, run_id: str, key: str) -> list[int]:
    """The steps (epochs) at which `key` was logged, in logging order."""
    return [m.step for m in client_for(uri).get_metric_history(run_id, key)]


def run_in_subprocess(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    """`resweep ARGS` as its own process group (so a test can kill all of it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(kwargs.pop("env", {}))
    return subprocess.Popen([RESWEEP, *args], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class RayHead:
    """`ray start --head --block` on 127.0.0.1 with token authentication, in its own
    process group.

    Stopped by signalling that group rather than with `ray stop`, which stops *every* Ray
    on the machine (other test sessions' too); users stop theirs with `ray stop`."""

    def __init__(self, workdir: Path, num_cpus: int = 2):
        self.workdir = Path(workdir)
        self.num_cpus = num_cpus
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.env = dict(os.environ, RAY_AUTH_MODE="token")

    @property
    def log(self) -> Path:
        return self.workdir / f"ray-head-{self.port}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> "RayHead":
        ray = str(Path(sys.executable).with_name("ray"))
        log = open(self.log, "wb")
        # Ports with a fixed default get free ones: other Rays may run on this machine.
        # (No Ray Client server: it needs ray[client], and resweep does not use it.)
        self.process = subprocess.Popen(
            [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(self.port), "--num-cpus", str(self.num_cpus),
             "--include-dashboard", "false", "--dashboard-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.process.poll() is not None or
                 b"Ray runtime started" in self.log.read_bytes(),
                 timeout, what="ray start --head")
        if self.process.poll() is not None:
            raise RuntimeError("ray start failed:\n" +
                               self.log.read_text()[-3000:])
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        kill_group(self.process, grace_s=3)
        self.process = None


def kill_group(process: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 10):
    """Signal a process group started with start_new_session; SIGKILL what outlives it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@contextlib.contextmanager
def ray_head(workdir: Path) -> Iterator[RayHead]:
    """A started head; one retry on fresh ports (a port taken between our probe and
    Ray's bind, by another process on this shared machine, fails the start)."""
    try:
        head = RayHead(workdir).start()
    except RuntimeError:
        head = RayHead(workdir).start()
    try:
        yield head
    finally:
        head.stop()
