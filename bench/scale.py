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
  With PostgreSQL 15 binaries and psycopg2 on the machine (`--tracking-postgres`), the
  server section runs again on a PostgreSQL backend (a throw-away cluster in the temp
  folder, run as the `postgres` user, on a free 127.0.0.1 port).
- `ray`: a `--ray-trials` N trial grid of the `mlp` toy (384 Fashion-MNIST images,
  `--ray-epochs` E epochs: a fraction of a second each, so the run is mostly overhead) through `resweep run` on the
  embedded Ray (2 slots on 2 cores), a fresh SQLite store: wall time, trials/min, the
  driver's peak RSS, the start-up (launch to the first trial), the trials' own time (each run's start to end, as the driver saw
  them; and the worker's training time), the orchestration overhead per trial = (wall x
  slots - the trials' own time) / N (also from the first trial's start to the last
  one's end: without the start-up), and each trial's wait for a slot (its start minus
  when a slot last came free) at the 10th and at the last trials (medians over 20);
  then `resweep report` of that study (wall time, peak RSS). Targets: overhead <= 1 s
  per trial, the last trials' wait within 20% (or 0.1 s) of the 10th's, report <= 60 s.
A section is a function `section(args) -> dict` registered in `SECTIONS`.

    python bench/scale.py                       # every section
    python bench/scale.py --sections plan --repeats 5
    python bench/scale.py --sections plan --baseline ../main   # before/after
    python bench/scale.py --sections tracking --tracking-runs 1000 --tracking-epochs 50
    python bench/scale.py --sections ray --ray-trials 1000

Nothing here is a timed test: the machine's load changes the numbers (reported as
`load_average` before and after).
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(REPO))  # run from a checkout, without installing it
RESWEEP = [sys.executable, "-c", "import sys; from orchestrator.cli import main; "
           "sys.exit(main(sys.argv[1:]))"]


# ---- shared helpers -------------------------------------------------------------------

def run_measured(argv: list[str], cwd: Path, checkout: Path = REPO,
                 timeout: float | None = None) -> dict:
    """Run `resweep ARGV` (from `checkout`) in a child process: wall seconds and peak RSS
    (MB) of that child alone (os.wait4's rusage, kilobytes on Linux), and when it started
    (seconds since the epoch, for comparing with MLflow's times); stdout is
    discarded. Past `timeout` seconds the child is killed: {"timed_out_after_s": ...}."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "CI": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryFile() as stderr:
        started, started_at = time.perf_counter(), time.time()
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
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
            "started_at": started_at}


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


# ---- the sections ---------------------------------------------------------------------

from bench.scale_ray import ray_section  # noqa: E402 (they use the helpers above)
from bench.scale_tracking import tracking_section  # noqa: E402

SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "plan": plan_section,
    "tracking": tracking_section,
    "ray": ray_section,
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
    parser.add_argument("--tracking-postgres", action=argparse.BooleanOptionalAction,
                        default=True, help="tracking: also a server on PostgreSQL (default: "
                        "where PostgreSQL 15 and psycopg2 are installed)")
    parser.add_argument("--ray-trials", type=int, default=1000, metavar="N",
                        help="ray: trials of the tiny study (default 1000; a multiple of 5)")
    parser.add_argument("--ray-epochs", type=int, default=3, metavar="E",
                        help="ray: epochs per trial (default 3)")
    parser.add_argument("--ray-timeout", type=float, default=3600.0, metavar="S",
                        help="ray: kill the `resweep run` after S seconds (default 3600)")
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
