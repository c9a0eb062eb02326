"""What the tests of several packages share, and a sandbox for the whole session (the
services themselves, Ray head and mlflow server, are in tests/services.py).

The sandbox (autouse, session): HOME, the calibration cache ($RESWEEP_CACHE_DIR) and the
folder of test-only fault cues ($RESWEEP_TEST_FAULTS, read by every trial of every Ray
started in the session) live in a temporary folder; $MLFLOW_TRACKING_URI and $RAY_ADDRESS
are unset, so a developer's
environment cannot point a test at a real store or cluster; the checkout's root comes first
on $PYTHONPATH, so subprocesses (`resweep`, `ray start`, Ray workers) run this checkout's
code, not whatever the venv's editable install points at.

Fixtures that hand out a helper (a function or a class) are session-scoped, so module-
scoped fixtures can use them too:

    free_port()                                   a TCP port nothing listens on, never
                                                  handed out before in this session
    wait_for(predicate, timeout, interval, what)  poll until truthy, else TimeoutError
    kill_group(process, sig, grace_s)             signal a start_new_session process group
    ray_head(workdir, num_cpus=2, env=None, python=None)
                                                  `with` a token-authenticated `ray start --head`
    faults                                        cue files of workers.faults (pause, die)
    mlflow_server(backend_uri, artifacts, logs)   `with` an `mlflow server` (its own group)
    per_epoch_keys                                the metrics a trial logs every epoch
    fixed_calibration                             a calibration cache with a known rate
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from services import (MlflowServer, _free_port, _kill_group, _ray_head,
                      _wait_for)
from workers.faults import FAULTS_ENV

REPO = Path(__file__).resolve().parents[1]

# Known throughput so estimates are exact numbers in tests (1 GMAC/s training).
FIXED_RATE = 1e9

PER_EPOCH_KEYS = ("epoch", "iteration", "lr", "train_loss", "train_error", "val_loss",
                  "val_error", "test_loss", "test_error", "images_per_s", "elapsed_s")


# ---- the session sandbox ---------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory) -> Iterator[Path]:
    """HOME and the calibration cache in a temporary folder, no tracking URI or Ray
    address from outside, the checkout first on PYTHONPATH; restored afterwards."""
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    os.environ["HOME"] = str(home)
    os.environ["RESWEEP_CACHE_DIR"] = str(home / ".cache" / "resweep")
    os.environ[FAULTS_ENV] = str(tmp_path_factory.mktemp("fault-cues"))
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *path])
    yield home
    os.environ.clear()
    os.environ.update(saved)


# ---- processes and ports ---------------------------------------------------------------

@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_port


@pytest.fixture(scope="session")
def wait_for():
    """wait_for(predicate, timeout, interval=0.2, what=...) -> the first truthy value."""
    return _wait_for


@pytest.fixture(scope="session")
def kill_group():
    """kill_group(process, sig=SIGTERM, grace_s=10): stop a whole process group."""
    return _kill_group


@pytest.fixture(scope="session")
def per_epoch_keys() -> tuple[str, ...]:
    """The metrics every trial logs once per epoch (step = epoch)."""
    return PER_EPOCH_KEYS


class Faults:
    """The cues of workers.faults in this session's $RESWEEP_TEST_FAULTS folder: make the
    trial named NAME pause after epoch N, or its process die before epoch N, in any Ray of
    the session (local or a `ray start --head`: both inherit the folder's name)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _write(self, name: str, suffix: str, epoch: int) -> None:
        tmp = self.folder / f".{name}.{suffix}.tmp"
        tmp.write_text(str(epoch))
        tmp.replace(self.folder / f"{name}.{suffix}")  # never seen half written

    def pause(self, name: str, after_epoch: int) -> None:
        self._write(name, "pause", after_epoch)

    def paused_pid(self, name: str) -> int | None:
        """The pid of the process holding NAME, once it waits (else None)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((self.folder / f"{name}.paused").read_text())
        return None

    def release(self, name: str) -> None:
        (self.folder / f"{name}.pause").unlink(missing_ok=True)

    def die(self, name: str, at_epoch: int) -> None:
        self._write(name, "die", at_epoch)

    def spare(self, name: str) -> None:
        (self.folder / f"{name}.die").unlink(missing_ok=True)

    def deaths(self, name: str) -> int:
        """How many processes the die cue of NAME has killed."""
        path = self.folder / f"{name}.died"
        return len(path.read_text().split()) if path.exists() else 0

    def clear(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()


@pytest.fixture
def faults(isolated_environment) -> Iterator[Faults]:
    """Fault cues for this test (every cue removed afterwards, so nothing stays held)."""
    cues = Faults(Path(os.environ[FAULTS_ENV]))
    cues.clear()
    yield cues
    cues.clear()


@pytest.fixture(scope="session")
def project_free_python(tmp_path_factory) -> Path:
    """A Python with every installed package but not this project: a venv whose only site
    entry is the project venv's site-packages, added by a .pth line. The packages import,
    but the .pth files inside that folder are not processed, so the editable install's
    import hook (the project) is not installed; with no $PYTHONPATH and a cwd outside the
    checkout, `import orchestrator` fails, as on a cluster node without the project."""
    import sysconfig

    venv = tmp_path_factory.mktemp("project-free-venv")
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv",
                    "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "project-venv.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="session")
def ray_head():
    """`with ray_head(log_dir, num_cpus=2, env=None, python=None, dashboard=False) as head:`
    head.address, head.env (for drivers), head.dashboard_url (the job server)."""
    return _ray_head


@pytest.fixture(scope="session")
def mlflow_server():
    """`with mlflow_server(backend_uri, artifacts_dir, log_dir) as server:` server.url;
    server.kill() and server.start() crash and restart it."""
    return MlflowServer


# ---- the calibration cache -------------------------------------------------------------

@pytest.fixture(scope="session")
def fixed_rate() -> float:
    """The training throughput (MAC/s) that `fixed_calibration` records."""
    return FIXED_RATE


@pytest.fixture
def fixed_calibration(tmp_path, monkeypatch):
    """A calibration cache with a known CPU throughput, in a private folder."""
    folder = tmp_path / "cache"
    folder.mkdir()
    entry = {"device": "cpu", "macs_per_s": FIXED_RATE, "images_per_s": 100.0,
             "measured": "fixed-for-tests"}
    cache = {f"cpu/threads={n}": {**entry, "threads": n} for n in (1, 2, 4, 8, 16)}
    (folder / "calibration.json").write_text(json.dumps(cache))
    monkeypatch.setenv("RESWEEP_CACHE_DIR", str(folder))
    return folder
