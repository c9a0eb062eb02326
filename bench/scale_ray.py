"""bench/scale.py's `ray` section: many tiny trials through `resweep run` on the embedded
Ray, then `resweep report` of them (see bench/scale.py's docstring for what is measured)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml


# ---- ray ------------------------------------------------------------------------------

RAY_DEPTHS = (2, 3, 4, 5, 6)   # x seeds = the trials (deeper toys diverge more often)


def tiny_study(folder: Path, trials: int, epochs: int) -> Path:
    """`trials` tiny mlp trials (5 depths x trials/5 seeds) on 384 Fashion-MNIST images."""
    seeds = max(1, trials // len(RAY_DEPTHS))
    study = {"name": "scale-ray", "description": "issue 13: many tiny trials through Ray",
             "data": {"dataset": "fashion-mnist", "train_size": 256, "val_size": 64,
                      "test_size": 64, "augment": False},
             "model": {"family": "mlp", "hidden": 16},
             "train": {"recipe": "cosine", "epochs": epochs, "batch_size": 64, "lr": 0.01,
                       "probes": False},
             "design": "grid", "space": {"depth": list(RAY_DEPTHS)}, "repeats": seeds,
             "resources": {"cpu": 1}, "max_trials": max(500, seeds * len(RAY_DEPTHS))}
    path = folder / "scale-ray.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def ray_section(args) -> dict:
    """See module docstring."""
    from analysis.store import Kind, kind_filter, search_all_runs
    from bench.scale import run_measured
    from orchestrator.tracking_store import open_client

    slots = 2
    with tempfile.TemporaryDirectory(prefix="resweep-ray-") as tmp:
        folder = Path(tmp)
        study = tiny_study(folder, args.ray_trials, args.ray_epochs)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        run_measured(["plan", str(study)], folder)   # calibrates, if the cache lacks it
        run = run_measured(["run", str(study), "--tracking-uri", uri, "--storage",
                            str(folder / "ray_results"), "--max-concurrent", str(slots),
                            "--quiet"], folder, timeout=args.ray_timeout)
        if "seconds" not in run:
            return {"trials": args.ray_trials, "run": run}
        client = open_client(uri)
        experiment = client.get_experiment_by_name("scale-ray").experiment_id
        children = search_all_runs(client, experiment, kind_filter(Kind.TRIAL))
        report = run_measured(["report", "scale-ray", "--tracking-uri", uri, "--out",
                               str(folder / "report")], folder, timeout=600)
    return {"trials": args.ray_trials, "epochs": args.ray_epochs, "slots": slots,
            **_ray_numbers(run, children, slots),
            "report": {"seconds": round(report["seconds"], 1) if "seconds" in report
                       else report, "peak_rss_mb": round(report.get("peak_rss_mb", 0), 1),
                       "targets_met": {"seconds<=60": report.get("seconds", 1e9) <= 60}}}


def _ray_numbers(run: dict, children: list, slots: int) -> dict:
    """Throughput, overhead per trial and the wait for a slot (see module docstring)."""
    import statistics as st

    runs = sorted(children, key=lambda r: r.info.start_time)
    n = len(runs)
    own = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
    trained = [r.data.metrics.get("elapsed_s", 0.0) for r in runs]
    waits = _slot_waits([(r.info.start_time / 1000, r.info.end_time / 1000) for r in runs],
                        slots)
    wall = run["seconds"]
    overhead = (wall * slots - sum(own)) / n
    window = 20
    early = st.median(waits[9:9 + window]) if n >= 9 + window else None
    late = st.median(waits[-window:]) if n >= 2 * window else None
    first_start = runs[0].info.start_time / 1000
    span = max(r.info.end_time for r in runs) / 1000 - first_start
    return {
        "finished": sum(r.data.tags.get("resweep.status") == "finished" for r in runs),
        "wall_s": round(wall, 1), "driver_peak_rss_mb": round(run["peak_rss_mb"], 1),
        "trials_per_min": round(60 * n / wall, 1),
        "trials_per_min_first_to_last_trial": round(60 * n / span, 1),
        "trial_own_s_median": round(st.median(own), 3),
        "trial_training_s_median": round(st.median(trained), 3),
        "overhead_per_trial_s": round(overhead, 3),
        "startup_s": round(first_start - run["started_at"], 1),   # launch to 1st trial
        "overhead_per_trial_s_first_to_last_trial": round((span * slots - sum(own)) / n, 3),
        "overhead_per_trial_s_vs_training_time": round((wall * slots - sum(trained)) / n, 3),
        "wait_for_slot_s_median_trials_10_to_29": round(early, 3) if early is not None else None,
        f"wait_for_slot_s_median_last_{window}": round(late, 3) if late is not None else None,
        "targets_met": {
            "overhead<=1s": overhead <= 1.0,
            "flat (last wait within 20% or 0.1 s of the 10th)": None if early is None
            or late is None else late <= max(1.2 * early, early + 0.1)}}


def _slot_waits(spans: list[tuple[float, float]], slots: int) -> list[float]:
    """For each trial (by start), its start minus the time the slot it took came free (the
    first trials: the first start). Slots are matched greedily, earliest free first."""
    import heapq

    free = [spans[0][0]] * slots if spans else []
    waits = []
    for start, end in spans:
        came_free = heapq.heappop(free)
        waits.append(max(0.0, start - came_free))
        heapq.heappush(free, max(end, start))
    return waits
