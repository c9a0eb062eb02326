"""bench/gpu.py's arithmetic (bench/gpu_estimate.py): the shared-GPU schedule, the
study-time estimate, the summaries. (The whole script is checked with `python
bench/gpu.py --cpu-smoke`, ~2.5 min, too slow for the suite; it runs for real on a GPU
machine via bench/gpu_run.sh.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import gpu_estimate as bench
from search_spaces import expand_study, load_study

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]

# ../shared/ANCHORS.md, one H200: CUDA graph + bf16 + channels_last, batch 128, images/s
H200_GRAPH = {("resnet20", "engine-graph"): 63_500, ("resnet56", "engine-graph"): 23_600,
              ("resnet110", "engine-graph"): 12_100, ("plain56", "engine-graph"): 24_300}
H200_PACKING = [{"procs": 1, "total_images_per_s": 55_000.0, "wall_s": 12.0,
                 "wall_images_per_s": 40_000.0},
                {"procs": 4, "total_images_per_s": 155_000.0}]


def test_shared_gpu_makespan_follows_the_packing_gain():
    makespan = bench.shared_gpu_makespan
    assert makespan([10, 10], 2, {1: 1.0, 2: 2.0}) == pytest.approx(10)    # perfect sharing
    assert makespan([10, 10], 2, {1: 1.0, 2: 1.0}) == pytest.approx(20)    # no gain
    # no gain: the short one ends at 10 s, the long one then runs alone for 5 s
    assert makespan([10, 5], 2, {1: 1.0, 2: 1.0}) == pytest.approx(15)
    assert makespan([10, 10, 10], 1, {1: 1.0}) == pytest.approx(30)        # one slot
    # three at a time between measured 2 and 4: gain interpolated (1.5 + 2.5) / 2 = 2
    assert makespan([6, 6, 6], 3, {1: 1.0, 2: 1.5, 4: 2.5}) == pytest.approx(9)


def test_degradation_estimate_from_the_h200_reference_rates():
    trials = expand_study(load_study(str(ROOT / "search_spaces" / "degradation.yaml")))
    estimate = bench.estimate_study_time(trials, H200_GRAPH, H200_PACKING, "degradation")
    rows = {r["trial"]: r for r in estimate["trials"]}
    assert len(rows) == 9 and estimate["slots_per_gpu"] == 4
    assert estimate["packing_gains"] == {1: 1.0, 4: pytest.approx(2.82, abs=0.01)}
    # measured nets come back at their measured rates (a line through three points)
    assert rows["resnet-56-A-w1-s0"]["train_images_per_s"] == pytest.approx(23_600, rel=0.1)
    assert rows["plain-56-A-w1-s0"]["train_images_per_s"] == pytest.approx(
        rows["resnet-56-A-w1-s0"]["train_images_per_s"] * 24_300 / 23_600, rel=1e-3)
    # 64k iterations x 128 images; 351 steps per 45k-image epoch -> 183 epochs, each with
    # 5k validation and 10k test images
    assert rows["resnet-110-A-w1-s0"]["iterations"] == 64_000
    assert rows["resnet-110-A-w1-s0"]["eval_images"] == 183 * 15_000
    startup = 12.0 - 40_000 * 12.0 / 55_000
    assert estimate["startup_s"] == pytest.approx(max(2.0, startup), abs=0.05)
    serial = sum(r["alone_s"] for r in rows.values())
    assert estimate["serial_minutes"] == pytest.approx(serial / 60, abs=0.05)
    # sharing the GPU four ways at 2.8x beats running the nine one after the other
    assert estimate["packed_minutes_longest_first"] <= estimate["packed_minutes"] < \
        estimate["serial_minutes"] / 2


def test_summary_ratios_and_targets():
    rows = [{"net": "resnet56", "path": "engine-graph", "images_per_s": 24_000},
            {"net": "resnet56", "path": "engine-eager", "images_per_s": 6_000},
            {"net": "resnet56", "path": "reference-bf16cl", "images_per_s": 5_000},
            {"net": "resnet56", "path": "reference-fp32", "images_per_s": 6_000}]
    summary = bench.throughput_summary(rows)["resnet56"]
    assert summary["graph_vs_best_reference"] == 4.0
    assert summary["graph_vs_reference_bf16cl"] == 4.8
    assert summary["graph_vs_engine_eager"] == 4.0
    result = {"throughput": {"summary": {"resnet56": summary}},
              "packing": {"rows": [{"procs": 4, "gain_vs_one": 2.4}]},
              "degradation_estimate": {"packed_minutes": 19.0}}
    targets = bench.targets(result)
    assert [targets[k]["met"] for k in ("resnet56_graph_vs_reference", "packing4_gain",
                                        "degradation_minutes")] == [True, False, True]


def test_graph_and_eager_errors_are_compared_per_trial():
    runs = [{"trial": "a", "path": "graph", "train_error": 0.10, "val_error": 0.12, "test_error": 0.13},
            {"trial": "a", "path": "eager", "train_error": 0.11, "val_error": 0.12, "test_error": 0.12},
            {"trial": "b", "path": "graph", "train_error": 0.40, "val_error": 0.3, "test_error": 0.3},
            {"trial": "b", "path": "eager", "train_error": 0.10, "val_error": 0.3, "test_error": 0.3}]
    a, b = bench.compare_paths(runs)
    assert a["graph_minus_eager"] == {"train_error": -0.01, "val_error": 0.0, "test_error": 0.01}
    assert a["within_noise"] and not b["within_noise"]


def test_the_entry_point_wires_every_section():
    from bench import gpu

    assert {gpu.capture_checks.__module__, gpu.throughput.__module__, gpu.packing.__module__,
            gpu.degradation_estimate.__module__} == {"bench.gpu_checks", "bench.gpu_engine",
                                                     "bench.gpu_packing", "bench.gpu_estimate"}
    assert callable(gpu.main)
