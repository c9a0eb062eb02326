"""The services the tests start for real, and the helpers they need: a port picker that
never hands out a port twice, polling, process-group kills, a token-authenticated
`ray start --head` and an `mlflow server` (crash and restart on the same port). Plain
classes and functions; tests/conftest.py hands them out as session fixtures."""

from __future__ import annotations

import contextlib
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
                 worker_env: dict[str, str] | None = None, python: Path | None = None,
                 dashboard: bool = False):
        self.log_dir = Path(log_dir)
        # The dashboard and its job server (`ray job submit`), on 127.0.0.1; it needs
        # ray[default]'s packages (docker/requirements-cluster.txt, which `make test` adds).
        self.dashboard = dashboard
        self.dashboard_port = _free_port()
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

    @property
    def dashboard_url(self) -> str:
        """Where `ray job submit --address` reaches the job server (dashboard=True)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> "RayHead":
        ray = ([str(self.python), "-m", "ray.scripts.scripts"] if self.python
               else [str(Path(sys.executable).with_name("ray"))])
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Every port with a fixed default gets a free one: other Rays may run here. No
        # Ray Client server (--ray-client-server-port): it needs ray[client], which only the
        # image installs (docker/requirements-cluster.txt).
        command = [*ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                   "--port", str(self.port), "--num-cpus", str(self.num_cpus),
                   "--num-gpus", "0", "--include-dashboard", str(self.dashboard).lower(),
                   "--dashboard-host", "127.0.0.1",
                   "--dashboard-port", str(self.dashboard_port),
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
              python: Path | None = None, dashboard: bool = False) -> Iterator[RayHead]:
    """A started head (`env`: extra variables for it and the workers it starts; `python`:
    the interpreter it and its workers run; `dashboard`: with its job server), retried on
    fresh ports."""
    head = _start_with_retries(
        lambda: RayHead(log_dir, num_cpus, worker_env=env, python=python,
                        dashboard=dashboard).start())
    try:
        yield head
    finally:
        head.stop()


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


