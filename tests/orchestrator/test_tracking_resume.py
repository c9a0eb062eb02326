"""Where an interrupted trial continues and what its run lacks (orchestrator.tracking_resume),
on trial folders laid out as Tune persists them, with the files `workers.checkpoints`
writes, and a real SQLite MLflow store. The end-to-end version (a SIGKILLed driver with
a queued backlog, then `resweep run` again) is tests/orchestrator/test_tracking_faults.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator.tracking_resume import resume_point, write_backfill
from workers.checkpoints import checkpoint_file, save_checkpoint, save_history

TRIAL = "0123456789ab"


def report(epoch: int) -> dict:
    return {"epoch": epoch, "iteration": 8 * epoch, "lr": 0.1 / epoch,
            "train_loss": 2.0 / epoch, "val_error": 0.5 - epoch / 100}


def checkpoint(folder: Path, index: int, epoch: int, *, final: bool = False,
               trial_id: str = TRIAL, weights: bool = True) -> Path:
    """Tune's checkpoint_<index> folder with the worker's files after `epoch`."""
    path = folder / f"checkpoint_{index:06d}"
    save_history(path, trial_id, [report(e) for e in range(1, epoch + 1)], final=final)
    if weights:
        save_checkpoint(checkpoint_file(path), {"trial_id": trial_id, "epoch": epoch})
    return path


@pytest.fixture
def trial_folder(tmp_path) -> Path:
    folder = tmp_path / "ray_results" / "study-20261201-120000" / "t-1_abc"
    folder.mkdir(parents=True)
    return folder


def test_the_newest_checkpoint_of_the_trial_is_used_and_what_follows_the_run_is_backfilled(
        trial_folder):
    tagged = checkpoint(trial_folder, 1, 2)   # what MLflow knows: epoch 2's checkpoint
    checkpoint(trial_folder, 3, 4)
    checkpoint(trial_folder, 4, 5, weights=False)          # partly copied: no checkpoint.pt
    checkpoint(trial_folder, 5, 6, trial_id="another0000")  # not this trial's
    point = resume_point(str(tagged), TRIAL, logged_epoch=2)
    assert point.checkpoint == str(trial_folder / "checkpoint_000003")
    assert point.epoch == 4
    assert [r["epoch"] for r in point.backfill] == [3, 4]
    assert point.backfill[0] == report(3) and point.last_epoch == 4


def test_the_final_epoch_is_left_for_the_resumed_trial_to_report_with_its_final_keys(
        trial_folder):
    tagged = checkpoint(trial_folder, 0, 1)
    checkpoint(trial_folder, 5, 6, final=True)
    point = resume_point(str(tagged), TRIAL, logged_epoch=1)
    assert point.epoch == 6
    assert [r["epoch"] for r in point.backfill] == [2, 3, 4, 5]


def test_a_checkpoint_without_history_resumes_as_before_and_a_gone_one_does_not(
        trial_folder):
    legacy = trial_folder / "checkpoint_000002"
    save_checkpoint(checkpoint_file(legacy), {"trial_id": TRIAL})
    point = resume_point(str(legacy), TRIAL, logged_epoch=3)
    assert (point.checkpoint, point.epoch, point.backfill) == (str(legacy), 3, [])
    assert resume_point(str(trial_folder.parent / "gone" / "checkpoint_000001"), TRIAL, 3) \
        is None


def test_the_backfill_writes_each_missing_epoch_once_even_when_repeated(tmp_path,
                                                                         trial_folder):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    tagged = checkpoint(trial_folder, 1, 2)
    checkpoint(trial_folder, 4, 5)
    point = resume_point(str(tagged), TRIAL, logged_epoch=2)
    # The killed driver's last request reached the store after all: epoch 3 is there.
    client.log_batch(run_id, metrics=[Metric(k, float(v), 1, 3) for k, v in report(3).items()])
    assert write_backfill(client, run_id, point) == 2      # epochs 4 and 5
    assert write_backfill(client, run_id, point) == 0      # a retry writes nothing
    for key in report(1):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(e, pytest.approx(report(e)[key])) for e in (3, 4, 5)], key
    tags = client.get_run(run_id).data.tags
    assert tags["resweep.last_epoch"] == "5"
    assert tags["resweep.checkpoint"] == str(trial_folder / "checkpoint_000004")
