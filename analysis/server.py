"""Start MLflow's UI (`mlflow server`) on a local store, bound to 127.0.0.1.

`mlflow server` starts a handful of helper processes; it runs in its own session so the
whole group can be stopped with one signal (ENV.md). Its log goes to a file so a chatty
server never blocks on a full pipe; the log's tail is shown when it fails to start.
"""

from __future__ import annotations

import os
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

from models.config import ConfigError

HOST = "127.0.0.1"


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class UiServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left after `timeout`."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        _signal_group(self.process.pid, signal.SIGKILL)  # helpers that outlived the leader


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start_ui(tracking_uri: str, port: int, ready_timeout: float = 120.0) -> UiServer:
    """Run `mlflow server` on `tracking_uri` at 127.0.0.1:`port` and wait until it answers
    /health. Raises ConfigError for a port in use, RuntimeError when it does not come up."""
    if not port_is_free(port):
        raise ConfigError(f"--port: got {port}, but {HOST}:{port} is in use; pass a free port "
                          "(e.g. --port 5001) or open the server that is already there")
    log_fd, log_name = tempfile.mkstemp(prefix="resweep-ui-", suffix=".log")
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # starts ~2x faster
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", HOST, "--port", str(port), "--workers", "1"]
    process = subprocess.Popen(command, stdout=log_fd, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    os.close(log_fd)
    server = UiServer(process, port, Path(log_name))
    try:
        wait_until_ready(server, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_ready(server: UiServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {server.process.returncode}:"
                               f"\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s:\n"
                       f"{server.log_tail()}")
