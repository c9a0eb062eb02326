"""bench/gpu.py's arithmetic: summaries, targets, and the degradation study's GPU time.

No torch: the throughput summary and the graph-vs-eager comparison read the rows the
sections measured; `estimate_study_time` turns measured images/s into minutes for a
study on one GPU (section 5); `targets` judges the measurement (section 6).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from workers.config import TrialConfig
from workers.data.datasets import DATASET_FACTS

ROOT = Path(__file__).resolve().parents[1]
# The measured nets: name -> (depth, residual), CIFAR-style (3x32x32 at full size).
NETS = {"resnet20": (20, True), "resnet56": (56, True), "resnet110": (110, True),
        "plain56": (56, False)}


# -- summaries of the measured rows -------------------------------------------------------
def throughput_summary(rows: list[dict]) -> dict:
    """Per net: engine graph / eager, reference eager (bf16cl, fp32) and the ratios."""
    summary = {}
    for name in NETS:
        rate = {r["path"]: r["images_per_s"] for r in rows
                if r.get("net") == name and "images_per_s" in r}
        references = [rate[k] for k in ("reference-bf16cl", "reference-fp32") if k in rate]
        entry = {"engine_graph": rate.get("engine-graph"),
                 "engine_eager": rate.get("engine-eager"),
                 "engine_eval": rate.get("engine-eval"),
                 "reference_bf16cl": rate.get("reference-bf16cl"),
                 "reference_fp32": rate.get("reference-fp32")}
        if entry["engine_graph"] and references:
            entry["graph_vs_best_reference"] = round(entry["engine_graph"] / max(references), 2)
        if entry["engine_graph"] and entry["reference_bf16cl"]:
            entry["graph_vs_reference_bf16cl"] = round(entry["engine_graph"] /
                                                       entry["reference_bf16cl"], 2)
        if entry["engine_graph"] and entry["engine_eager"]:
            entry["graph_vs_engine_eager"] = round(entry["engine_graph"] / entry["engine_eager"], 2)
        if entry["engine_eager"] and entry["reference_bf16cl"]:
            entry["engine_eager_vs_reference_bf16cl"] = round(
                entry["engine_eager"] / entry["reference_bf16cl"], 2)
        summary[name] = entry
    return summary


def compare_paths(runs: list[dict]) -> list[dict]:
    """Graph minus eager, per trial; 'within noise' = every error within 2 points, and
    the test-error gap within 4 binomial standard errors of the test set as well."""
    by_trial: dict[str, dict] = {}
    for run in runs:
        by_trial.setdefault(run["trial"], {})[run["path"]] = run
    out = []
    for name, paths in by_trial.items():
        if {"graph", "eager"} - set(paths):
            continue
        g, e = paths["graph"], paths["eager"]
        diff = {k: round(g[k] - e[k], 4) for k in ("train_error", "val_error", "test_error")
                if g.get(k) is not None and e.get(k) is not None}
        out.append({"trial": name, "graph_minus_eager": diff,
                    "within_noise": all(abs(v) <= 0.02 for v in diff.values())})
    return out


# -- 5. the degradation study's estimated time --------------------------------------------
def degradation_estimate(bench) -> dict:
    """search_spaces/degradation.yaml on this GPU from the rates measured so far."""
    rows = bench.result.get("throughput", {}).get("rows", [])
    rate = {(r["net"], r["path"]): r["images_per_s"] for r in rows if "images_per_s" in r}
    trials, source = study_trials(ROOT / "search_spaces" / "degradation.yaml")
    packing = bench.result.get("packing", {}).get("rows", [])
    return estimate_study_time(trials, rate, packing, source)


def study_trials(path: Path) -> tuple[list[TrialConfig], str]:
    from search_spaces import expand_study, load_study  # pydantic + pyyaml

    return expand_study(load_study(str(path))), str(path.relative_to(ROOT))


def estimate_study_time(trials: list[TrialConfig], rate: dict, packing: list[dict],
                        source: str, startup_s: float | None = None) -> dict:
    """Minutes for `trials` on one GPU from measured images/s (see the module docstring).
    Epochs and evaluations assume CIFAR-10's split (50,000 training, 10,000 test images),
    as in degradation.yaml (only val_size is read from the trials)."""
    measured = {NETS[n][0]: rate[(n, "engine-graph")] for n in ("resnet20", "resnet56", "resnet110")
                if (n, "engine-graph") in rate}
    if len(measured) < 2:
        return {"error": "needs engine-graph rates of at least two ResNets"}
    # seconds per image = a + b x depth, least squares through the measured ResNets
    depths = sorted(measured)
    xs, ys = depths, [1 / measured[d] for d in depths]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    plain_factor = (rate[("resnet56", "engine-graph")] / rate[("plain56", "engine-graph")]
                    if ("plain56", "engine-graph") in rate and ("resnet56", "engine-graph") in rate
                    else 1.0)
    eval_rates = {NETS[n][0]: rate[(n, "engine-eval")] for n in ("resnet20", "resnet56", "resnet110")
                  if (n, "engine-eval") in rate}
    one = next((r for r in packing if r["procs"] == 1), None)
    gains = {1: 1.0}
    if one:
        gains.update({r["procs"]: r["total_images_per_s"] / one["total_images_per_s"]
                      for r in packing})
    if startup_s is None:
        # a lone `resweep train` process: wall time minus its training time (start-up,
        # data, capture, one small test evaluation)
        startup_s = 5.0
        if one:
            trained_images = one["wall_images_per_s"] * one["wall_s"]
            startup_s = one["wall_s"] - trained_images / one["total_images_per_s"]
        startup_s = max(2.0, min(startup_s, 30.0))
    cifar10 = DATASET_FACTS["cifar10"]
    rows = []
    for t in trials:
        depth = t.model.depth
        seconds_per_image = (a + b * depth) * (1.0 if t.model.residual else plain_factor)
        iterations = t.train.iterations or 0
        train_images = iterations * t.train.batch_size
        steps_per_epoch = (cifar10.train - t.data.val_size) // t.train.batch_size
        epochs = math.ceil(iterations / steps_per_epoch)
        test_evals = sum(1 for e in range(1, epochs + 1)
                         if e % t.train.eval_every == 0 or e == epochs)
        eval_images = epochs * t.data.val_size + test_evals * cifar10.test
        nearest = min(eval_rates, key=lambda d: abs(d - depth)) if eval_rates else None
        eval_rate = eval_rates[nearest] * nearest / depth if nearest else 3 / seconds_per_image
        alone = train_images * seconds_per_image + eval_images / eval_rate + startup_s
        rows.append({"trial": t.name, "iterations": iterations,
                     "train_images_per_s": round(1 / seconds_per_image, 1),
                     "eval_images": eval_images, "alone_s": round(alone, 1)})
    gpu = trials[0].resources.gpu
    slots = max(1, math.floor(1 / gpu + 1e-9)) if 0 < gpu <= 1 else 1
    alone = [r["alone_s"] for r in rows]
    in_order = shared_gpu_makespan(alone, slots, gains)
    longest_first = shared_gpu_makespan(sorted(alone, reverse=True), slots, gains)
    return {"study": source, "trials": rows, "slots_per_gpu": slots,
            "packing_gains": {k: round(v, 2) for k, v in sorted(gains.items())},
            "startup_s": round(startup_s, 1),
            "serial_minutes": round(sum(alone) / 60, 1),
            "packed_minutes": round(in_order / 60, 1),
            "packed_minutes_longest_first": round(longest_first / 60, 1),
            "assumptions": "step time linear in depth through the measured ResNets "
                           "(graph, bf16, batch 128); plain nets scaled by plain-56/ResNet-56; "
                           "eval at the measured eager eval rate (batch 1024) scaled by "
                           "depth; k trials sharing the GPU each run at gain(k)/k of their "
                           "lone speed, gain(k) measured with ResNet-20 (deeper nets keep "
                           "the GPU busier, so their gain is likely smaller); trials start in "
                           "the study's order as slots free up (packed_minutes), or deepest "
                           "first (packed_minutes_longest_first); one GPU"}


def shared_gpu_makespan(alone_seconds: list[float], slots: int, gains: dict[int, float]) -> float:
    """Seconds until the last trial ends when up to `slots` trials share one GPU.

    alone_seconds: each trial's time alone on the GPU, in start order. While k trials run,
    each advances at gain(k)/k of its lone speed (gain(1) = 1; between measured k,
    linear; beyond the largest, its gain). A pending trial starts when one ends.
    """
    def gain(k: int) -> float:
        known = sorted(gains)
        if k in gains:
            return gains[k]
        if k > known[-1]:
            return gains[known[-1]]
        low = max(x for x in known if x < k)
        high = min(x for x in known if x > k)
        return gains[low] + (gains[high] - gains[low]) * (k - low) / (high - low)

    pending = list(alone_seconds)
    running: list[float] = []          # remaining lone-seconds of work
    clock = 0.0
    while pending or running:
        while pending and len(running) < slots:
            running.append(pending.pop(0))
        speed = gain(len(running)) / len(running)     # lone-seconds per second, each
        step = min(running) / speed
        clock += step
        running = [r - step * speed for r in running]
        running = [r for r in running if r > 1e-9]
    return clock


# -- 6. targets ---------------------------------------------------------------------------
def targets(result: dict) -> dict:
    summary = result.get("throughput", {}).get("summary", {})
    r56 = summary.get("resnet56", {})
    ratio = r56.get("graph_vs_best_reference")
    packing = {r["procs"]: r for r in result.get("packing", {}).get("rows", [])}
    gain = packing[4]["gain_vs_one"] if 4 in packing else None
    minutes = result.get("degradation_estimate", {}).get("packed_minutes")
    return {
        "resnet56_graph_vs_reference": {"value": ratio, "target": ">= 4",
                                        "met": ratio is not None and ratio >= 4.0},
        "packing4_gain": {"value": gain, "target": ">= 2.5",
                          "met": gain is not None and gain >= 2.5},
        "degradation_minutes": {"value": minutes, "target": "<= 20",
                                "met": minutes is not None and minutes <= 20.0}}
