"""What orchestration costs: `resweep run` of an N-trial study against the same trials run
one after another with `resweep train`. Prints JSON.

The study: N CIFAR-style nets (depth 8, width x0.5 by default) on the first
`--train-size` Fashion-MNIST images, one CPU and one torch thread per trial, varied only by
seed (`repeats: N`), so every trial does the same work.

- `sequential_train_s`: wall time of N `resweep train STUDY --trial NAME` processes, one
  after another (each pays its own Python/torch start-up, as a user would).
- `run_s[c]`: wall time of `resweep run STUDY` at `--max-concurrent c` for each c in
  `--concurrency` (embedded Ray start-up, Tune, the MLflow SQLite store, checkpoints every
  epoch; a fresh store and results folder each time).
- `ratio[c]` = run_s[c] / sequential_train_s: at c=1 the orchestration overhead (target
  <= 1.15 for trials of 30 s or more); at c=2 on 2 cores it should be below 1.
- `trial_s`: each trial's own training time (its last `elapsed_s`) in the run at the first
  `--concurrency` value.

    python bench/overhead.py                                  # 4 trials of ~30 s, c = 1, 2
    python bench/overhead.py --trials 4 --epochs 3 --concurrency 2   # a quick look

Nothing here is a timed test: the machine's load changes the numbers (reported as
`load_average` before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RESWEEP = str(Path(sys.executable).with_name("resweep"))


def write_study(folder: Path, args) -> Path:
    study = {
        "name": "overhead-bench",
        "description": "identical trials but for the seed: the cost of orchestration",
        "data": {"dataset": "fashion-mnist", "train_size": args.train_size, "val_size": 512,
                 "test_size": 512, "augment": False},
        "train": {"recipe": "cosine", "epochs": args.epochs, "batch_size": 128, "lr": 0.05,
                  "threads": 1},
        "model": {"family": "cifar", "depth": args.depth, "width": args.width},
        "design": "grid", "space": {"residual": [True]}, "repeats": args.trials,
        "resources": {"cpu": 1},
    }
    path = folder / "overhead-bench.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds


def trial_names(study: Path) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from search_spaces import expand_study, load_study

    return [t.name for t in expand_study(load_study(study))]


def trial_seconds(uri: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    from analysis.store import Kind, kind_filter

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("overhead-bench")
    runs = client.search_runs([experiment.experiment_id], kind_filter(Kind.TRIAL))
    return sorted(round(r.data.metrics["elapsed_s"], 2) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="resweep-overhead-") as tmp:
        folder = Path(tmp)
        study = write_study(folder, args)
        names = trial_names(study)

        started = time.perf_counter()
        for name in names:
            timed([RESWEEP, "train", str(study), "--trial", name, "--quiet"], folder)
        sequential = time.perf_counter() - started

        run_s, trial_s = {}, None
        for c in args.concurrency:
            uri = f"sqlite:///{folder}/mlflow-c{c}.db"
            run_s[c] = timed([RESWEEP, "run", str(study), "--quiet", "--tracking-uri", uri,
                              "--storage", str(folder / f"ray_results-c{c}"),
                              "--max-concurrent", str(c)], folder)
            if trial_s is None:
                trial_s = trial_seconds(uri)

    result = {
        "benchmark": "resweep run vs sequential resweep train",
        "trials": args.trials,
        "trial": {"model": f"cifar depth {args.depth} width {args.width}",
                  "data": f"fashion-mnist, {args.train_size} training images",
                  "epochs": args.epochs, "threads": 1},
        "cpus": os.cpu_count(),
        "sequential_train_s": round(sequential, 2),
        "run_s": {str(c): round(s, 2) for c, s in run_s.items()},
        "ratio": {str(c): round(s / sequential, 3) for c, s in run_s.items()},
        "trial_s": trial_s,
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
