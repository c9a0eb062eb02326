"""The cluster stack's parts, run natively for tests: PostgreSQL, an MLflow tracking
server on it, and a token-authenticated Ray head.

The same services as docker-compose.yml's `postgres`, `mlflow` and `ray-head`, started
from the binaries on this machine instead of from images (no Docker engine runs here):

    with postgres_server() as pg:                      # initdb + pg_ctl start on 127.0.0.1
        with MlflowServer(pg.sqlalchemy_uri, artifacts_dir, log_dir) as server:
            ...  server.url -> "http://127.0.0.1:PORT"
            server.kill(); server.start()               # a crash and a restart
    with RayHead(log_dir) as head:                     # RAY_AUTH_MODE=token + RAY_AUTH_TOKEN
        ...  head.address -> "127.0.0.1:PORT", head.env -> what a driver must export

PostgreSQL refuses to run as root, so as root its binaries run as the system user
`postgres` (created by Debian's `postgresql-common`) through `runuser`. Helpers raise
`StackUnavailable` when a part is not installed here (tests skip, except in CI where
that is a failure) and `StackError` when an installed part fails.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# Debian's layout; a PATH lookup (`initdb`) covers other installs.
POSTGRES_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
                     "/usr/lib/postgresql/17/bin")
POSTGRES_OS_USER = "postgres"  # who runs the server when the test runs as root
DB_NAME = "mlflow"
DB_USER = "mlflow"


class StackUnavailable(RuntimeError):
    """A part of the stack is not installed on this machine (the message says what)."""


class StackError(RuntimeError):
    """A part of the stack is installed but failed to start or stop (with its log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_postgres_bin_dir() -> Path:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or StackUnavailable."""
    for directory in POSTGRES_BIN_DIRS:
        if Path(directory, "initdb").is_file():
            return Path(directory)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise StackUnavailable(
        f"no PostgreSQL server binaries (looked in {', '.join(POSTGRES_BIN_DIRS)} and PATH); "
        "on Debian: apt-get install -y postgresql-15")


def _run_as_prefix() -> list[str]:
    """The command prefix that runs PostgreSQL binaries as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        raise StackUnavailable(
            f"running as root and there is no system user {POSTGRES_OS_USER!r} to run "
            "PostgreSQL as (Debian's postgresql-common creates it)") from None
    if not shutil.which("runuser"):
        raise StackUnavailable("running as root and `runuser` (util-linux) is missing")
    return ["runuser", "-u", POSTGRES_OS_USER, "--"]


@dataclass
class PostgresServer:
    """A running throw-away PostgreSQL cluster (password auth on 127.0.0.1:port)."""

    bin_dir: Path
    base_dir: Path
    port: int
    password: str
    run_as: list[str]

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def sqlalchemy_uri(self) -> str:
        """What `mlflow server --backend-store-uri` takes (as in docker-compose.yml)."""
        return (f"postgresql+psycopg2://{DB_USER}:{self.password}"
                f"@127.0.0.1:{self.port}/{DB_NAME}")

    def pg(self, tool: str, *args: str, timeout: float = 60) -> str:
        """Run one PostgreSQL tool as the server's user; its stdout, or StackError."""
        cmd = [*self.run_as, str(self.bin_dir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise StackError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()}"
                                   f"\n{log[-2000:]}")
        return proc.stdout

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self.pg("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """initdb a fresh cluster in a temporary directory, start it, create the mlflow DB.

    The directory is made here (not pytest's tmp_path, which only root may enter) and
    given to the server's user; it is removed afterwards.
    """
    bin_dir = find_postgres_bin_dir()
    run_as = _run_as_prefix()
    # In /tmp even when $TMPDIR is set: the server's user must be able to reach it.
    base_dir = Path(tempfile.mkdtemp(prefix="resweep-pg-", dir="/tmp" if run_as else None))
    password = secrets.token_hex(12)
    server = PostgresServer(bin_dir, base_dir, free_port(), password, run_as)
    try:
        server.socket_dir.mkdir()
        pwfile = base_dir / "pwfile"
        pwfile.write_text(password + "\n")
        if run_as:
            user = pwd.getpwnam(POSTGRES_OS_USER)
            for path in (base_dir, server.socket_dir, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        # Superuser `mlflow` with a password: TCP clients must authenticate, as in compose;
        # the unix socket (in our private directory) trusts, for createdb below.
        server.pg("initdb", "-D", str(server.data_dir), "-U", DB_USER, f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--no-instructions")
        options = (f"-p {server.port} -k {server.socket_dir} "
                   "-c listen_addresses=127.0.0.1 -c fsync=off")  # fsync off: a test store
        server.pg("pg_ctl", "start", "-D", str(server.data_dir), "-l", str(server.log_file),
                  "-o", options, "-w", "-t", "60")
        server.pg("createdb", "-h", str(server.socket_dir), "-p", str(server.port),
                  "-U", DB_USER, DB_NAME)
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(base_dir, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on PostgreSQL with proxied artifacts, in its own process group.

    `mlflow server` forks a handful of helper processes (uvicorn workers, ...): starting it
    with a new session and signalling the whole group is the only way to stop all of them.
    """

    def __init__(self, backend_store_uri: str, artifacts_dir: Path, log_dir: Path,
                 port: int | None = None, start_timeout_s: float = 120):
        self.backend_store_uri = backend_store_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.log_dir = Path(log_dir)
        self.port = port or free_port()
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
        told is recorded must already be in PostgreSQL and the artifact store.
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
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill(signal.SIGTERM)


class RayHead:
    """`ray start --head` on 127.0.0.1 with token authentication, as the compose `ray-head`.

    The token is passed as RAY_AUTH_TOKEN (as the stack's .env does); a driver reaches the
    head with `resweep run --address 127.0.0.1:PORT` and the same two variables. Stopped by
    signalling its process group, never with `ray stop` (that stops every Ray on the
    machine, other sessions' too).
    """

    def __init__(self, log_dir: Path, num_cpus: int = 2, start_timeout_s: float = 120):
        self.log_dir = Path(log_dir)
        self.num_cpus = num_cpus
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "RayHead":
        ray = Path(sys.executable).with_name("ray")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / "ray-head.log"
        # Every port with a fixed default gets a free one: other Rays may run here. No
        # Ray Client server (--ray-client-server-port): it needs ray[client], which only the
        # image installs (docker/requirements-cluster.txt).
        command = [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                   "--port", str(self.port), "--num-cpus", str(self.num_cpus),
                   "--num-gpus", "0", "--include-dashboard", "false",
                   "--dashboard-port", str(free_port()),
                   "--dashboard-agent-listen-port", str(free_port()),
                   "--disable-usage-stats"]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=dict(os.environ, **self.env),
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"ray start --head exited with {self.process.returncode}:\n"
                                 f"{log_path.read_text(errors='replace')[-3000:]}")
            if b"Ray runtime started" in log_path.read_bytes():
                return self
            time.sleep(0.5)
        self.stop()
        raise StackError(f"ray start --head not up after {self.start_timeout_s} s")

    def stop(self) -> None:
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process = None

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
