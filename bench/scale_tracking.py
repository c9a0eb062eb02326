"""bench/scale.py's `tracking` section: reports/s through the driver's tracking writer to
SQLite, a real `mlflow server` (SQLite backend) and, where installed, one on PostgreSQL
(see bench/scale.py's docstring for what is measured)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# ---- tracking -------------------------------------------------------------------------

REPORT_KEYS = ("epoch", "iteration", "lr", "train_loss", "train_error", "val_loss",
               "val_error", "test_loss", "test_error", "images_per_s", "elapsed_s")


def tracking_section(args) -> dict:
    """See module docstring: SQLite directly, then through `mlflow server`."""
    from orchestrator.tracking_store import open_client

    out: dict = {"runs": args.tracking_runs, "epochs": args.tracking_epochs,
                 "concurrent": args.tracking_concurrent, "metrics_per_report": len(REPORT_KEYS),
                 "offered_reports_per_s": args.tracking_rate or "unpaced"}
    with tempfile.TemporaryDirectory(prefix="resweep-tracking-") as tmp:
        folder = Path(tmp)
        client = open_client(f"sqlite:///{folder / 'direct.db'}")
        out["sqlite"] = _tracking_rates(client, args)
        with _mlflow_server(folder) as url:
            out["mlflow_server"] = _tracking_rates(open_client(url), args)
        if args.tracking_postgres:
            if not _postgres_available():
                out["mlflow_server_postgresql"] = "skipped: no PostgreSQL 15 or psycopg2"
            else:
                try:
                    with _postgres(folder) as backend, _mlflow_server(folder, backend) as url:
                        out["mlflow_server_postgresql"] = _tracking_rates(open_client(url),
                                                                          args)
                except (subprocess.CalledProcessError, SystemExit, OSError) as err:
                    detail = getattr(err, "stderr", None) or b""
                    out["mlflow_server_postgresql"] = (
                        f"failed: {err} {detail.decode(errors='replace')[-300:]}".strip())
    return out


def _tracking_rates(client, args) -> dict:
    from orchestrator.tracking_writer import TrackingWriter

    n, epochs, slots = args.tracking_runs, args.tracking_epochs, args.tracking_concurrent
    experiment = client.create_experiment(f"bench-{time.time_ns()}")
    started = time.perf_counter()
    runs = [client.create_run(experiment, run_name=f"t{i}").info.run_id for i in range(n)]
    result: dict = {"run_creates_per_s": round(n / (time.perf_counter() - started), 1)}

    done_at: dict[str, float] = {}   # run id -> when its last epoch was written
    log_batch = client.log_batch

    def timed_log_batch(run_id, metrics=(), **kwargs):
        log_batch(run_id, metrics=metrics, **kwargs)
        if any(m.step == epochs for m in metrics):
            done_at[run_id] = time.perf_counter()

    client.log_batch = timed_log_batch        # this client only, for this measurement
    writer = TrackingWriter(client)
    longest_wait, most_queued = 0.0, 0
    pace = 1.0 / args.tracking_rate if args.tracking_rate else 0.0
    started = next_at = time.perf_counter()
    for first in range(0, n, slots):           # K trials side by side, one epoch each in turn
        wave = runs[first:first + slots]
        for epoch in range(1, epochs + 1):
            for index, run_id in enumerate(wave):
                if pace:
                    next_at += pace
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                metrics = {k: epoch + i / 100 + index / 1e4 for i, k in enumerate(REPORT_KEYS)}
                call = time.perf_counter()
                writer.log_epoch(run_id, metrics, epoch, {"resweep.last_epoch": str(epoch)})
                longest_wait = max(longest_wait, time.perf_counter() - call)
                most_queued = max(most_queued, writer.backlog)
        for run_id in wave:                    # the trial's end, after its epochs
            writer.call(run_id, lambda rid=run_id: client.set_terminated(rid), "end")
    assert writer.close(timeout=3600) and not writer.rejected, writer.rejected
    total = time.perf_counter() - started
    client.log_batch = log_batch
    ends = sorted(done_at.values())
    tenth = max(1, n // 10)
    first_rate = tenth * epochs / (ends[tenth - 1] - started)
    last_rate = (tenth * epochs / (ends[-1] - ends[n - tenth - 1]) if n > tenth
                 else first_rate)
    result.update({
        "reports": n * epochs, "seconds": round(total, 2),
        "reports_per_s": round(n * epochs / total, 1),
        "reports_per_s_first_10pct_runs": round(first_rate, 1),
        "reports_per_s_last_10pct_runs": round(last_rate, 1),
        "last_over_first": round(last_rate / first_rate, 3),
        "log_batch_requests": writer.requests - n,
        "reports_per_log_batch": round(n * epochs / max(1, writer.requests - n), 2),
        "most_queued": most_queued,
        "longest_producer_wait_ms": round(1000 * longest_wait, 2),
        "targets_met": {"reports_per_s>=200": min(first_rate, last_rate) >= 200,
                        "last_within_20pct_of_first": last_rate >= 0.8 * first_rate}})
    if args.tracking_sync_runs:
        result["synchronous"] = _synchronous_rate(client, experiment, args)
        result["writer_over_synchronous"] = round(
            result["reports_per_s"] / result["synchronous"]["reports_per_s"], 1)
    return result


def _synchronous_rate(client, experiment: str, args) -> dict:
    """The old path: one log_batch per report on the caller's thread (`StudyTracker.log_epoch`
    without a writer), for `--tracking-sync-runs` more runs of the same store."""
    from orchestrator.tracking import StudyTracker

    tracker = StudyTracker(client, "", experiment)
    n = args.tracking_sync_runs
    runs = [client.create_run(experiment, run_name=f"sync{i}").info.run_id for i in range(n)]
    started = time.perf_counter()
    for run_id in runs:
        for epoch in range(1, args.tracking_epochs + 1):
            metrics = {k: epoch + i / 100 for i, k in enumerate(REPORT_KEYS)}
            tracker.log_epoch(run_id, metrics, epoch, {"resweep.last_epoch": str(epoch)})
    seconds = time.perf_counter() - started
    return {"runs": n, "reports": n * args.tracking_epochs,
            "reports_per_s": round(n * args.tracking_epochs / seconds, 1)}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _postgres_available() -> bool:
    import importlib.util

    return (PG_BIN / "initdb").exists() and importlib.util.find_spec("psycopg2") is not None


@contextlib.contextmanager
def _postgres(folder: Path):
    """A throw-away PostgreSQL cluster in `folder` (run as the `postgres` user when this
    runs as root: initdb refuses root), on a free 127.0.0.1 port; yields the MLflow URI."""
    data, port = folder / "pgdata", _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data.mkdir()
    if as_pg:
        subprocess.run(["chown", "postgres", str(folder), str(data)], check=True)
    subprocess.run(as_pg + [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U",
                            "postgres"], check=True, capture_output=True)
    subprocess.run(as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l",
                            str(folder / "postgres.log"), "-o",
                            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run(as_pg + [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                                "-U", "postgres", "mlflow"], check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast",
                                "stop"], capture_output=True)


@contextlib.contextmanager
def _mlflow_server(folder: Path, backend: str | None = None):
    """`mlflow server` on a free 127.0.0.1 port, SQLite backend (or `backend`), proxied
    artifacts, in its own session (it forks helpers: the whole group is stopped)."""
    import signal
    import urllib.request

    port = _free_port()
    backend = backend or f"sqlite:///{folder / 'server.db'}"
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(folder / "mlflow-server.log", "ab")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", backend,
         "--artifacts-destination", (folder / "artifacts").as_uri(), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("mlflow server did not start:\n"
                                     + (folder / "mlflow-server.log").read_text()[-2000:])
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
