"""Cluster-scale studies (issue 13): what resweep costs before and around the trials.
Prints JSON, one key per section.

Sections (`--sections`, default all that exist):

- `plan`: `resweep plan STUDY --json` and `resweep run STUDY --dry-run` of a 1-trial
  study and of the 10,000-trial grid of the issue (25 depths 6n+2, n = 1..25 x 10 widths
  0.25..2.5 x residual with shortcuts A/B/C plus the plain twin x 10 seeds; written to a
  temp folder with max_trials raised), measured side by side in one run: wall time and
  the child process's peak RSS (`os.wait4`), the median of `--repeats` runs taken in
  turns, and the ratio 10,000 / 1. Targets: <= 3 s, <= 2x the 1-trial plan, <= 500 MB.
  Each command runs once first, unmeasured (it calibrates this machine if the cache in
  ~/.cache/resweep lacks its thread count); `run --dry-run` runs in an empty folder, so
  there is no MLflow store to compare with.
- `tracking`: epoch reports per second through the driver's background writer
  (`orchestrator.tracking_writer`) to a fresh SQLite store and to a real `mlflow server`
  on 127.0.0.1 (SQLite backend, started in its own session and stopped with its group):
  `--tracking-runs` N runs (created first, timed on their own) x `--tracking-epochs` E
  epochs of 11 metrics, `--tracking-concurrent` K trials reporting in turn as Tune's
  loop would, each trial's end queued after its epochs, offered at `--tracking-rate`
  reports/s (default 500; 0: all at once, the writer's capacity with full coalescing).
  The rate over the first and the last 10% of runs (by when their last epoch was
  written; target: >= 200/s, last within 20% of first), log_batch requests and reports
  per request, the most reports queued, the longest wait of a producer call; and, for `--tracking-sync-runs` runs, the old path (one
  synchronous log_batch per report) for the ratio.
- (to come: `ray` - trials/min and overhead per trial through `resweep run`; `report` -
  `resweep report` time.) A section is a function `section(args) -> dict` registered in
  `SECTIONS`.

    python bench/scale.py                       # every section
    python bench/scale.py --sections plan --repeats 5
    python bench/scale.py --sections plan --baseline ../main   # before/after
    python bench/scale.py --sections tracking --tracking-runs 1000 --tracking-epochs 50

Nothing here is a timed test: the machine's load changes the numbers (reported as
`load_average` before and after).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[1]
RESWEEP = [sys.executable, "-c", "import sys; from orchestrator.cli import main; "
           "sys.exit(main(sys.argv[1:]))"]


# ---- shared helpers -------------------------------------------------------------------

def run_measured(argv: list[str], cwd: Path, checkout: Path = REPO,
                 timeout: float | None = None) -> dict:
    """Run `resweep ARGV` (from `checkout`) in a child process: wall seconds and peak RSS
    (MB) of that child alone (os.wait4's rusage, kilobytes on Linux); stdout is
    discarded. Past `timeout` seconds the child is killed: {"timed_out_after_s": ...}."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "CI": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(RESWEEP + argv, cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        while True:   # reap it ourselves: wait4 gives this child's own rusage
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - started > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                return {"timed_out_after_s": timeout}
            time.sleep(0.002)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"resweep {' '.join(argv)} exited {proc.returncode}:\n"
                             + stderr.read().decode(errors="replace"))
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def summarise(runs: list[dict]) -> dict:
    done = [r for r in runs if "seconds" in r]
    if not done:
        return {"timed_out_after_s": runs[0]["timed_out_after_s"], "runs": len(runs)}
    return {"seconds": round(statistics.median(r["seconds"] for r in done), 3),
            "seconds_min": round(min(r["seconds"] for r in done), 3),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in done), 1),
            "runs": len(runs)}


# ---- plan -----------------------------------------------------------------------------

_BASE = {
    "data": {"dataset": "fashion-mnist", "val_size": 5000, "augment": True},
    "train": {"recipe": "cosine", "epochs": 10},
    "model": {"family": "cifar", "block": "basic"},
    "design": "grid",
    "resources": {"cpu": 1},
}


def grid_study(folder: Path) -> tuple[Path, int]:
    """The issue's grid: 25 x 10 x (residual A/B/C + plain) x 10 seeds = 10,000 trials
    (1,500 cells x 10 seeds before the plain twins merge across shortcuts)."""
    study = {"name": "scale-grid",
             "description": "issue 13: 1,000 architectures x 10 seeds", **_BASE,
             "space": {"depth": [6 * n + 2 for n in range(1, 26)],
                       "width": [round(0.25 * k, 2) for k in range(1, 11)],
                       "residual": [True, False], "shortcut": ["A", "B", "C"]},
             "repeats": 10, "max_trials": 10_000}
    path = folder / "scale-grid.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path, 25 * 10 * 4 * 10


def one_trial_study(folder: Path) -> tuple[Path, int]:
    study = {"name": "scale-one", "description": "one trial", **_BASE,
             "space": {"depth": [20]}, "repeats": 1}
    path = folder / "scale-one.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path, 1


def plan_section(args) -> dict:
    """This checkout's plan times (and, with --baseline PATH, another checkout's, e.g.
    main before the change, with --baseline-timeout per run)."""
    out: dict = {"this_checkout": _plan_times(REPO, args.repeats, None)}
    if args.baseline:
        out["baseline"] = {"checkout": str(args.baseline),
                           **_plan_times(Path(args.baseline), 1, args.baseline_timeout)}
    return out


def _plan_times(checkout: Path, repeats: int, timeout: float | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="resweep-scale-") as tmp:
        folder = Path(tmp)
        studies = {"1": one_trial_study(folder), "10000": grid_study(folder)}
        commands = {"plan_json": lambda p: ["plan", str(p), "--json"],
                    "run_dry_run": lambda p: ["run", str(p), "--dry-run"]}
        runs: dict[tuple[str, str], list[dict]] = {}
        for command, argv in commands.items():
            run_measured(argv(studies["1"][0]), folder, checkout)   # warm-up: calibration
            for _ in range(repeats):                                # in turns: same load
                for size, (path, _) in studies.items():
                    runs.setdefault((command, size), []).append(
                        run_measured(argv(path), folder, checkout, timeout))
    out: dict = {"studies": {size: {"trials": trials} for size, (_, trials) in
                             studies.items()}}
    for command in commands:
        one, big = summarise(runs[(command, "1")]), summarise(runs[(command, "10000")])
        out[command] = {"1_trial": one, "10000_trials": big}
        if "seconds" in big and "seconds" in one:
            out[command]["ratio_10000_to_1"] = round(big["seconds"] / one["seconds"], 2)
            out[command]["targets_met"] = {
                "seconds<=3": big["seconds"] <= 3.0,
                "ratio<=2": big["seconds"] <= 2 * one["seconds"],
                "peak_rss<=500MB": big["peak_rss_mb"] <= 500}
    return out


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


@contextlib.contextmanager
def _mlflow_server(folder: Path):
    """`mlflow server` on a free 127.0.0.1 port, SQLite backend, proxied artifacts, in its
    own session (it forks helpers: the whole group is stopped)."""
    import signal
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(folder / "mlflow-server.log", "wb")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
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


# ---- the sections ---------------------------------------------------------------------

SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "plan": plan_section,
    "tracking": tracking_section,
    # "ray": ray_section,             # issue 13 item 3 (to come)
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS),
                        default=list(SECTIONS), help="what to measure (default: all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measured runs of each command (the median is reported)")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="plan: also time another checkout (e.g. /work/main), once")
    parser.add_argument("--baseline-timeout", type=float, default=120.0, metavar="S",
                        help="plan: kill a baseline run after S seconds (default 120)")
    parser.add_argument("--tracking-runs", type=int, default=200, metavar="N",
                        help="tracking: runs (default 200; the issue's target: 1000)")
    parser.add_argument("--tracking-epochs", type=int, default=20, metavar="E",
                        help="tracking: epochs per run (default 20; the issue's: 50)")
    parser.add_argument("--tracking-concurrent", type=int, default=8, metavar="K",
                        help="tracking: trials reporting side by side (default 8)")
    parser.add_argument("--tracking-rate", type=float, default=500.0, metavar="R",
                        help="tracking: offer R reports/s (default 500, 2.5x the target; "
                        "0: unpaced, all at once: the writer's capacity)")
    parser.add_argument("--tracking-sync-runs", type=int, default=10, metavar="N",
                        help="tracking: runs through the old synchronous path (0: none)")
    args = parser.parse_args(argv)
    result: dict = {"load_average_before": [round(x, 2) for x in os.getloadavg()],
                    "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    for name in args.sections:
        result[name] = SECTIONS[name](args)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
