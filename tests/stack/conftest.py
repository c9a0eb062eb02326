"""The cluster stack's database, run natively for tests: a throw-away PostgreSQL cluster.

The same service as docker-compose.yml's `postgres`, started from the binaries on this
machine instead of from an image (no Docker engine runs here). The `mlflow server` on it
and the token-authenticated Ray head are the root conftest's `mlflow_server` and
`ray_head`.

PostgreSQL refuses to run as root, so as root its binaries run as the system user
`postgres` (created by Debian's `postgresql-common`) through `runuser`. When PostgreSQL is
not installed here the `postgres` fixture skips, except in CI where that is a failure;
an installed part that fails raises PostgresError.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

# Debian's layout; a PATH lookup (`initdb`) covers other installs.
POSTGRES_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
                     "/usr/lib/postgresql/17/bin")
POSTGRES_OS_USER = "postgres"  # who runs the server when the test runs as root
DB_NAME = "mlflow"
DB_USER = "mlflow"


class PostgresError(RuntimeError):
    """PostgreSQL is installed but one of its tools failed (with the server's log)."""


class StackUnavailable(RuntimeError):
    """A part of the stack is not installed on this machine (the message says what)."""


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
        """Run one PostgreSQL tool as the server's user; its stdout, or PostgresError."""
        cmd = [*self.run_as, str(self.bin_dir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise PostgresError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()}"
                                f"\n{log[-2000:]}")
        return proc.stdout

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self.pg("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")


@contextlib.contextmanager
def _postgres_server(port: int) -> Iterator[PostgresServer]:
    """initdb a fresh cluster in a temporary directory, start it, create the mlflow DB.

    The directory is made here (not pytest's tmp_path, which only root may enter) and
    given to the server's user; it is removed afterwards.
    """
    bin_dir = find_postgres_bin_dir()
    run_as = _run_as_prefix()
    # In /tmp even when $TMPDIR is set: the server's user must be able to reach it.
    base_dir = Path(tempfile.mkdtemp(prefix="resweep-pg-", dir="/tmp" if run_as else None))
    password = secrets.token_hex(12)
    server = PostgresServer(bin_dir, base_dir, port, password, run_as)
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


@pytest.fixture(scope="module")
def postgres(free_port) -> Iterator[PostgresServer]:
    """A running PostgreSQL with an empty `mlflow` database (password auth on 127.0.0.1);
    skips where PostgreSQL cannot run, fails in CI (which installs it: missing is a bug)."""
    with contextlib.ExitStack() as cleanup:
        try:
            pg = cleanup.enter_context(_postgres_server(free_port()))
        except StackUnavailable as missing:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL is not installed in CI: {missing}")
            pytest.skip(f"PostgreSQL cannot run here: {missing}")
        yield pg
