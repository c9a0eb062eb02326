"""`resweep plan`: the table, --json, the cost model and its calibration."""

from __future__ import annotations

import json

import pytest
import torch

from search_spaces import expand_study, load_study
from search_spaces.cost import (cache_path, calibrate, estimate, packing_share,
                                wall_seconds)

torch.set_num_threads(1)


def test_plan_degradation_prints_nine_trials_and_totals(capsys, fixed_calibration, run_cli):
    code, out, err = run_cli("plan", "search_spaces/degradation.yaml")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith(("plain-", "resnet-"))]
    assert len(rows) == 9
    # name, trial_id, residual, depth: each row is its trial of the expansion, in order.
    trials = expand_study(load_study("search_spaces/degradation.yaml"))
    assert [row.split()[:4] for row in rows] == [
        [t.name, t.trial_id, str(t.model.residual).lower(), str(t.model.depth)] for t in trials]
    assert rows[0].split()[:4] == ["plain-20-A-w1-s0", "c79ed4e3307f", "false", "20"]
    assert all(row.endswith("1/4 GPU") for row in rows)
    assert any(row.startswith("resnet-110-A-w1-s0") and "1.73M" in row and "64,000" in row
               for row in rows)
    total = next(line for line in out.splitlines() if line.startswith("total:"))
    assert total.startswith("total: 9 trials,") and "GPU-hours" in total
    assert "4 trial(s) at a time (1 GPU(s) x 4 trials per GPU)" in total
    assert "cost model: reference H200" in out


def test_plan_json_matches_the_expansion(capsys, fixed_calibration, run_cli):
    code, out, _ = run_cli("plan", "search_spaces/degradation.yaml", "--json")
    assert code == 0
    plan = json.loads(out)
    trials = expand_study(load_study("search_spaces/degradation.yaml"))
    assert [r["trial_id"] for r in plan["trials"]] == [t.trial_id for t in trials]
    assert [r["config"] for r in plan["trials"]] == [t.to_dict() for t in trials]
    assert plan["totals"]["trials"] == 9 and plan["totals"]["cpu_hours"] == 0.0
    gpu_hours = sum(r["est_seconds"] for r in plan["trials"]) / 3600 * 0.25
    assert plan["totals"]["gpu_hours"] == pytest.approx(gpu_hours, abs=1e-3)
    assert {r["device_share"] for r in plan["trials"]} == {"1/4 GPU"}
    assert plan["trials"][0]["params"] == {"residual": False, "depth": 20}
    assert plan["varied"] == ["residual", "depth"]


def test_cost_model_arithmetic(tmp_path, capsys, fixed_calibration, run_cli, study_file,
                               small_study, fixed_rate):
    path = study_file(small_study)
    code, out, _ = run_cli("plan", str(path), "--json", "--cpus", "2",
                           "--set", "train.epochs=3", "--set", "train.eval_every=2")
    assert code == 0
    plan = json.loads(out)
    row = plan["trials"][0]
    # 256 training images, batch 128: 2 steps per epoch, 3 epochs; validation (64) every
    # epoch, the 10,000 test images after epochs 2 and 3.
    assert (row["iterations"], row["epochs"], row["train_images"], row["eval_images"]) == \
        (6, 3, 768, 3 * 64 + 2 * 10_000)
    expected = 5.0 + (3 * 768 + 20_192) * row["macs"] / fixed_rate
    assert row["est_seconds"] == pytest.approx(expected, abs=0.06)
    seconds = [r["est_seconds"] for r in plan["trials"]]
    assert plan["totals"]["concurrency"] == 2
    assert plan["totals"]["wall_seconds"] == pytest.approx(wall_seconds(seconds, 2), abs=0.1)
    assert plan["totals"]["cpu_hours"] == pytest.approx(sum(seconds) / 3600, abs=1e-3)


def test_wall_time_and_gpu_packing():
    assert wall_seconds([10, 10, 10], 2) == 20
    assert wall_seconds([30, 10, 10, 10], 2) == 30
    assert wall_seconds([], 4) == 0
    assert packing_share(1.0) == 1.0 and packing_share(0.5) == 1.0
    assert packing_share(0.25) == pytest.approx(0.7)
    assert packing_share(0.125) == pytest.approx(3.0 / 8)


def test_iteration_recipes_count_epochs_from_the_split():
    trial = expand_study(load_study("search_spaces/degradation.yaml"))[0]
    cost = estimate(trial, 40_551_040, _rate(1e12))
    # 45,000 images, batch 128 on a GPU with CUDA graphs (full batches): 351 steps/epoch
    assert cost.iterations == 64_000 and cost.epochs == 183
    assert cost.train_images == 64_000 * 128


def _rate(macs_per_s):
    from search_spaces.cost import Calibration

    return Calibration(device="test", threads=1, macs_per_s=macs_per_s, images_per_s=1.0,
                       measured="test")


def test_calibration_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("RESWEEP_CACHE_DIR", str(tmp_path))
    first = calibrate("cpu", threads=1)
    assert cache_path() == tmp_path / "calibration.json" and cache_path().exists()
    assert first.macs_per_s > 1e8 and first.images_per_s > 1  # a real measurement
    assert calibrate("cpu", threads=1) == first                # read back, not remeasured
    assert json.loads(cache_path().read_text())["cpu/threads=1"]["measured"] == first.measured


def test_plan_of_a_search_study_samples_the_space(capsys, fixed_calibration, run_cli):
    code, out, _ = run_cli("plan", "search_spaces/search-optuna.yaml", "--json",
                           "--set", "search.num_samples=5")
    plan = json.loads(out)
    assert code == 0 and len(plan["trials"]) == 5
    assert plan["totals"]["concurrency"] == 2  # search.max_concurrent
    assert "upper bound" in plan["note"]
    assert plan["search"]["space"]["width"] == {"type": "choice", "values": [0.25, 0.5, 1.0]}
    assert plan["search"]["scheduler"]["asha"]["max_t"] == 6
    assert all(r["name"].startswith(f"sample{i + 1}-") for i, r in enumerate(plan["trials"]))


def test_plan_help_explains_the_estimate(capsys):
    from orchestrator.cli import main

    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = capsys.readouterr().out
    assert "3x the" in text and "calibration.json" in text and "--set" in text


@pytest.mark.parametrize("option,value", [("--cpus", "0"), ("--gpus", "-1"),
                                          ("--gpu-memory", "0")])
def test_plan_rejects_a_count_or_size_below_one_with_exit_2(capsys, option, value):
    from orchestrator.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "search_spaces/degradation-quick.yaml", option, value])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err
