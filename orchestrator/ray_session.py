"""Where trials run: an embedded local Ray sized to this machine, or an existing cluster.

`ray_session(address=None)` starts a private local Ray (all cores, no dashboard) and shuts
it down afterwards; `ray_session("auto" | "HOST:PORT")` connects to a cluster started with
`ray start --head` and leaves it running (so does $RAY_ADDRESS, which `ray job submit`
sets for its entrypoint). A Ray that is already initialised in this process
(a test fixture, a notebook) is used as it is and left running.

The code reaches the workers in one of two ways: installed on every node (the image of the
cluster stack, or `pip install -e .` on a shared file system), or shipped with the job as a
runtime environment (`ship_code=True`: the project's packages as `py_modules`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from models.config import ConfigError

# The packages a trial imports; shipped as py_modules with --ship-code.
PROJECT_PACKAGES = ("models", "workers", "search_spaces", "orchestrator")

# Environment every trial process gets, whatever the cluster's defaults:
# - Tune would chdir into the trial folder; relative data paths must keep working.
WORKER_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}


@dataclass(frozen=True)
class RaySession:
    """What the run command needs to know about the Ray it got."""

    address: str | None      # None: embedded local Ray
    cpus: float
    gpus: float

    def describe(self) -> str:
        where = "embedded local Ray" if self.address is None else f"Ray cluster at {self.address}"
        return f"{where} ({self.cpus:g} CPUs, {self.gpus:g} GPUs)"


def runtime_env(ship_code: bool) -> dict:
    """The job's runtime environment: worker env vars, and the code if it is shipped."""
    env: dict = {"env_vars": dict(WORKER_ENV)}
    if ship_code:
        import importlib

        env["py_modules"] = [str(Path(importlib.import_module(name).__file__).parent)
                             for name in PROJECT_PACKAGES]
    return env


@contextlib.contextmanager
def ray_session(address: str | None = None, *, log_to_driver: bool = False,
                ship_code: bool = False) -> Iterator[RaySession]:
    """Start or connect to Ray for one `resweep run`, and clean up what was started here.

    log_to_driver is off by default: trial output would tear the progress display; each
    trial's output stays in Ray's session logs (/tmp/ray/session_latest/logs) and failed
    trials' errors are reported by the run command.
    """
    import ray

    # Worker env vars also in our own environment: a local Ray's workers inherit it, so
    # they hold even for a Ray initialised before us (tests).
    os.environ.update(WORKER_ENV)
    if ray.is_initialized():
        resources = ray.cluster_resources()
        yield RaySession(address, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
        return

    # `ray job submit` runs its entrypoint with RAY_ADDRESS set: that means the cluster.
    option = "--address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        from orchestrator.arg_types import connect_timeout

        # ray.init retries an address with nothing behind it for minutes: ask first.
        check_ray_address(address, connect_timeout(), option)
    kwargs = dict(log_to_driver=log_to_driver, logging_level=logging.WARNING)
    if address is None:
        # Embedded: every core of this machine, no dashboard (it costs a process and ~1 s).
        # "local" starts a new Ray even if another one runs on this machine (ray.init()
        # would join that one). Its workers inherit our environment and import the code
        # we import: no runtime env.
        kwargs.update(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False)
    else:
        kwargs.update(address=address, runtime_env=runtime_env(ship_code))
    log = _Captured()
    try:
        if address is None:
            ray.init(**kwargs)
        else:
            # A cluster that rejects our token says so only in its C++ client's log lines
            # (fd 2, once a second while ray.init retries), not in the exception: read them.
            with _fd2_captured() as log:
                ray.init(**kwargs)
            sys.stderr.write(log.text)  # a successful connection's warnings, as they were
    except Exception as err:  # noqa: BLE001 - Ray raises several types for a bad address
        if address is None:
            raise  # the embedded Ray failed to start: not an input error
        raise ConfigError(_connect_hint(address, err, log.text, option)) from None
    try:
        resources = ray.cluster_resources()
        yield RaySession(address, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
    finally:
        ray.shutdown()


def _host_port(address: str) -> tuple[str, int] | None:
    """("10.0.0.5", 6379) from "10.0.0.5:6379" or "ray://10.0.0.5:10001"; None for
    "auto", "local" or an address without a port (Ray resolves those itself)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_ray_address(address: str, timeout_s: float, option: str = "--address") -> None:
    """Raise ConfigError, saying what to check, when nothing accepts a connection at the
    address's host and port within `timeout_s` (a TCP connect: no Ray is imported or
    started). "auto" and addresses without a port are left to ray.init."""
    target = _host_port(address)
    if target is None:
        return
    host, port = target
    try:
        socket.create_connection(target, timeout=timeout_s).close()
    except OSError as err:
        if isinstance(err, ConnectionRefusedError):
            why = f"connection refused: nothing listens on port {port}"
        elif isinstance(err, socket.gaierror):
            why = f"the host {host!r} is unknown"
        elif isinstance(err, TimeoutError):
            why = f"no answer within {timeout_s:g} s"
        else:
            why = err.strerror or type(err).__name__
        raise ConfigError(
            f"{option}: no Ray cluster answers at {address} ({why}); check that the cluster "
            f"is running (`ray status --address {host}:{port}`), that {port} is its GCS port "
            f"(`ray start --head --port {port}`), that {host} can be reached from here, and, "
            "for token auth, that RAY_AUTH_MODE=token is exported here too; on a slow "
            f"network raise $RESWEEP_CONNECT_TIMEOUT (now {timeout_s:g} s)") from None


class _Captured:
    text = ""


@contextlib.contextmanager
def _fd2_captured() -> Iterator[_Captured]:
    """What is written to file descriptor 2 (C++ logs included) inside the block, in
    `.text` once the block ends, instead of on the terminal."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read().decode("utf-8", "replace")


_AUTH_WORDS = ("invalidauthtoken", "unauthenticated", "authentication")


def _connect_hint(address: str, err: Exception, log: str = "",
                  option: str = "--address") -> str:
    """What to check when ray.init to `address` (from `option`) failed; `log` is what Ray's
    C++ client wrote to fd 2 meanwhile (its last lines are kept: they say why)."""
    auth = os.environ.get("RAY_AUTH_MODE")
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if any(word in f"{type(err).__name__} {err} {log}".lower() for word in _AUTH_WORDS):
        return (f"{option}: the Ray cluster at {address!r} rejected this driver's "
                f"authentication ({type(err).__name__}: {first[:200]}); export "
                f"RAY_AUTH_MODE=token (it is {auth!r}) and the cluster's token "
                "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), the same as "
                "for `ray start` on the head")
    lines = [f"{option}: cannot connect to a Ray cluster at {address!r}: "
             f"{type(err).__name__}: {first}",
             "start one with `RAY_AUTH_MODE=token ray start --head --port 6379` and pass "
             "--address auto (same machine) or --address HOST:6379"]
    if auth != "token":
        lines.append("if the cluster uses token authentication, export RAY_AUTH_MODE=token "
                     f"here too (it is {auth!r}) and make the token available "
                     "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")
    tail = [line.strip() for line in log.strip().splitlines()[-3:] if line.strip()]
    if tail:
        lines.append("Ray's client said: " + " | ".join(t[:200] for t in tail))
    return "\n".join(lines)
