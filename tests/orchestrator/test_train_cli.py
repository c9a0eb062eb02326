"""`resweep train` (through the real CLI entry point) and `python -m workers.data.files`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from models.config import ModelConfig
from orchestrator.cli import main as resweep
from workers.config import DataConfig, TrainConfig, TrialConfig
from workers.data.files import find_dataset, main as fetch_main

QUICK_STUDY = "search_spaces/degradation-quick.yaml"
SHRINK = ["--set", "data.train_size=256", "--set", "data.val_size=100",
          "--set", "data.test_size=200", "--set", "train.epochs=1"]


def _trial_json(tmp_path, **data) -> str:
    trial = TrialConfig(name="cli-tiny", model=ModelConfig(depth=8, width=0.25, in_channels=1,
                                                           image_size=28),
                        data=DataConfig(train_size=256, val_size=64, test_size=64, **data),
                        train=TrainConfig(epochs=1, batch_size=64, threads=1))
    path = tmp_path / "trial.json"
    path.write_text(json.dumps(trial.to_dict()))
    return str(path)


def test_train_a_trial_json_prints_epochs_and_writes_the_result(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = resweep(["train", "--config", _trial_json(tmp_path), "--set", "train.epochs=2",
                    "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "epoch   1/2" in printed and "epoch   2/2" in printed and "img/s" in printed
    assert "ETA" in printed and "finished: train error" in printed
    result = json.loads(out.read_text())
    assert result["status"] == "finished" and len(result["history"]) == 2
    assert result["trial"]["train"]["epochs"] == 2 and result["trial"]["name"] == "cli-tiny"
    assert result["final"]["status"] == "finished" and result["params"] > 0
    assert set(result["probes"]) == {"layer_responses", "gradient_norms"}


def test_train_one_trial_of_the_quick_study_by_name_and_by_selection(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert resweep(["train", QUICK_STUDY, "--trial", "resnet-20-A-w0.5-s0", *SHRINK,
                    "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["trial"]["model"]["depth"] == 20 and result["trial"]["model"]["residual"]
    assert result["history"][0]["iteration"] == 2          # 256 images at batch 128
    capsys.readouterr()
    # --where on a varied key selects; together with the others it leaves one trial
    assert resweep(["train", QUICK_STUDY, "--where", "model.depth=20", "--where",
                    "residual=false", "--where", "seed=0", *SHRINK, "--list"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 1 and listed[0].startswith("plain-20-A-w0.5-s0")


def test_train_input_errors_exit_2_with_a_message(tmp_path, capsys):
    assert resweep(["train"]) == 2
    assert "no trial to run" in capsys.readouterr().err
    assert resweep(["train", QUICK_STUDY]) == 2
    err = capsys.readouterr().err
    assert "the study has 18 trials; pick one with --trial" in err and "resnet-44-A-w0.5-s2" in err
    assert resweep(["train", QUICK_STUDY, "--trial", "resnet-99"]) == 2
    assert "matches no trial" in capsys.readouterr().err
    missing = tmp_path / "no-data"
    assert resweep(["train", "--config", _trial_json(tmp_path, root=str(missing))]) == 2
    err = capsys.readouterr().err
    assert f"looked in: {missing}" in err and "workers.data.files fashion-mnist" in err


def test_train_help_explains_the_ways_to_pick_a_trial(capsys):
    with pytest.raises(SystemExit) as exit_info:
        resweep(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for phrase in ("--trial NAME_OR_ID", "--set KEY=VALUE", "--where KEY=VALUE",
                   "--config TRIAL.JSON",
                   "--checkpoint-dir DIR", "--out FILE.json", "exit status"):
        assert phrase in out


def test_fetch_finds_fashion_mnist_and_prints_where(tmp_path, monkeypatch, capsys):
    assert fetch_main(["fashion-mnist"]) == 0
    where = capsys.readouterr().out.strip()
    assert where == str(find_dataset("fashion-mnist"))
    # $RESWEEP_DATA comes first
    for file in find_dataset("fashion-mnist").glob("*-ubyte.gz"):
        (tmp_path / file.name).symlink_to(file)
    monkeypatch.setenv("RESWEEP_DATA", str(tmp_path))
    assert fetch_main(["fashion-mnist"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)


def test_fetch_as_a_module_prints_the_directory():
    done = subprocess.run([sys.executable, "-m", "workers.data.files", "fashion-mnist"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith(("fashion-mnist", "raw"))


def test_fetch_rejects_unknown_data_sets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fetch_main(["mnist-digits"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_throughput_bench_prints_its_json(capsys):
    """The benchmark still runs (tiny sizes; the numbers are not asserted: not a timed test)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_throughput", "bench/throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--depth", "8", "--width", "0.25", "--batch", "16", "--steps", "2",
                       "--repeats", "3", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    bare, matched = report["baselines"]["bare"], report["baselines"]["matched"]
    # the engine trains a conv net channels_last on the CPU; the bare loop stays NCHW fp32
    assert report["engine_layout"] == matched["layout"] == "channels_last"
    assert (bare["layout"], bare["precision"]) == ("nchw", "fp32")
    for baseline in (bare, matched):
        assert len(baseline["pair_ratios"]) == 3 and baseline["ratio"] > 0
        assert baseline["cpu_time_ratio"] > 0
    assert report["ratio"] == bare["ratio"] and report["end_to_end"]["ratio"] > 0
    assert report["meets_cpu_target"] == (report["ratio"] >= report["cpu_target"])
