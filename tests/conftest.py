"""What the tests of several packages share, and a sandbox for the whole session.

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
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

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

_PORTS_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A port the kernel says is free, never one handed out before in this session: two
    servers started one after the other must not get the same port (the kernel may offer
    a port again once its probe socket is closed). A port can still be taken by another
    process between this probe and the server's bind: the starters retry on fresh ports
    (`_start_with_retries`)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 probes")


def _start_with_retries(start, attempts: int = 3):
    """start() -> a started server; on StackError (a port taken between our probe and the
    server's bind, by another process on this shared machine) again, with fresh ports."""
    for attempt in range(attempts):
        try:
            return start()
        except StackError:
            if attempt == attempts - 1:
                raise


def _wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _kill_group(process: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 10):
    """Signal a process group started with start_new_session; SIGKILL what outlives it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


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


# ---- the cluster stack's parts, run natively ---------------------------------------------

class StackError(RuntimeError):
    """A part of the stack is installed but failed to start or stop (with its log)."""


class RayHead:
    """`ray start --head --block` on 127.0.0.1 with token authentication (as the compose
    `ray-head`), in its own process group.

    The token is passed as RAY_AUTH_TOKEN (as the stack's .env does); a driver reaches the
    head with `--address 127.0.0.1:PORT` and `env=head.env`. Stopped by signalling its
    process group, never with `ray stop` (that stops every Ray on the machine, other test
    sessions' too); users stop theirs with `ray stop`.
    """

    def __init__(self, log_dir: Path, num_cpus: int = 2, start_timeout_s: float = 120,
                 worker_env: dict[str, str] | None = None, python: Path | None = None):
        self.log_dir = Path(log_dir)
        self.worker_env = dict(worker_env or {})  # the head's (so its workers') environment
        # The interpreter of `ray start`, so of every worker; with one given, the head
        # gets no $PYTHONPATH either (see `project_free_python`).
        self.python = python
        self.num_cpus = num_cpus
        self.start_timeout_s = start_timeout_s
        self.port = _free_port()
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.log_dir / f"ray-head-{self.port}.log"

    def start(self) -> "RayHead":
        ray = ([str(self.python), "-m", "ray.scripts.scripts"] if self.python
               else [str(Path(sys.executable).with_name("ray"))])
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Every port with a fixed default gets a free one: other Rays may run here. No
        # Ray Client server (--ray-client-server-port): it needs ray[client], which only the
        # image installs (docker/requirements-cluster.txt).
        command = [*ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                   "--port", str(self.port), "--num-cpus", str(self.num_cpus),
                   "--num-gpus", "0", "--include-dashboard", "false",
                   "--dashboard-port", str(_free_port()),
                   "--dashboard-agent-listen-port", str(_free_port()),
                   "--disable-usage-stats"]
        env = dict(os.environ, **self.env, **self.worker_env)
        if self.python:
            env.pop("PYTHONPATH", None)
        with open(self.log, "wb") as log:  # cwd: nothing importable there
            self.process = subprocess.Popen(command, env=env, cwd=self.log_dir,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"ray start --head exited with {self.process.returncode}:\n"
                                 f"{self.log.read_text(errors='replace')[-3000:]}")
            if b"Ray runtime started" in self.log.read_bytes():
                return self
            time.sleep(0.5)
        self.stop()
        raise StackError(f"ray start --head not up after {self.start_timeout_s} s")

    def stop(self) -> None:
        if self.process is None:
            return
        _kill_group(self.process, grace_s=15)
        self.process = None


@contextlib.contextmanager
def _ray_head(log_dir: Path, num_cpus: int = 2, env: dict[str, str] | None = None,
              python: Path | None = None) -> Iterator[RayHead]:
    """A started head (`env`: extra variables for it and the workers it starts; `python`:
    the interpreter it and its workers run), retried on fresh ports."""
    head = _start_with_retries(
        lambda: RayHead(log_dir, num_cpus, worker_env=env, python=python).start())
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="session")
def ray_head():
    """`with ray_head(log_dir, num_cpus=2, env=None) as head:` head.address, head.env (for
    drivers)."""
    return _ray_head


class MlflowServer:
    """`mlflow server` with proxied artifacts (the compose `mlflow` service's flags), in its
    own process group.

    `mlflow server` forks a handful of helper processes (uvicorn workers, ...): starting it
    with a new session and signalling the whole group is the only way to stop all of them.
    """

    def __init__(self, backend_store_uri: str, artifacts_dir: Path, log_dir: Path,
                 port: int | None = None, start_timeout_s: float = 120):
        self.backend_store_uri = backend_store_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.log_dir = Path(log_dir)
        self.fixed_port = port is not None
        self.port = port or _free_port()  # kept across kill() and start(): a restart
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The same flags as the compose `mlflow` service, except the artifact store."""
        mlflow = Path(sys.executable).with_name("mlflow")
        return [str(mlflow), "server",
                "--backend-store-uri", self.backend_store_uri,
                "--artifacts-destination", self.artifacts_dir.as_uri(),
                "--serve-artifacts",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", "1"]  # 2 shared cores: one worker answers a test's requests

    def start(self) -> "MlflowServer":
        """Start the server and wait until /health answers (raises StackError)."""
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"mlflow-server-{self.starts}.log", "wb")
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"mlflow server exited with {self.process.returncode}:\n"
                                 f"{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.kill()
        raise StackError(f"mlflow server not healthy after {self.start_timeout_s} s:\n"
                         f"{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, chars: int = 3000) -> str:
        path = self.log_dir / f"mlflow-server-{self.starts}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (`kill -- -PGID`) and reap the leader.

        SIGKILL by default: a crash, with no chance to flush anything; what clients were
        told is recorded must already be in the backend store and the artifact store.
        """
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # helpers that outlived a SIGTERM
        self.process = None

    def __enter__(self) -> "MlflowServer":
        if self.fixed_port:
            return self.start()

        def start_on_a_fresh_port() -> "MlflowServer":
            if self.starts:
                self.port = _free_port()
            return self.start()
        return _start_with_retries(start_on_a_fresh_port)

    def __exit__(self, *exc) -> None:
        self.kill(signal.SIGTERM)


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
