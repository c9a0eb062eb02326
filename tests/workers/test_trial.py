"""train_trial end to end on real Fashion-MNIST subsets: learning, the report contract,
bit-exact resume, divergence, and corrupt checkpoints."""

from __future__ import annotations

import math
import time

import pytest
import torch

from models import build_model, count_params
from models.config import ConfigError, ModelConfig
from workers.config import DataConfig, TrainConfig, TrialConfig
from workers.trial import CheckpointWarning, train_trial

EPOCH_KEYS = {"epoch", "iteration", "lr", "train_loss", "train_error", "val_loss", "val_error",
              "images_per_s", "elapsed_s"}
TIMING_KEYS = {"images_per_s", "elapsed_s"}
SMALL_NET = ModelConfig(depth=8, width=0.5, in_channels=1, image_size=28)


class Recorder:
    """A `report` callback that keeps every call; optionally stops after `stop_after` epochs."""

    def __init__(self, stop_after: int | None = None):
        self.calls: list[tuple[dict, str | None]] = []
        self.stop_after = stop_after

    def __call__(self, metrics: dict, checkpoint_path: str | None) -> None:
        self.calls.append((metrics, checkpoint_path))
        if self.stop_after is not None and metrics["epoch"] >= self.stop_after:
            raise KeyboardInterrupt("simulated interruption after the epoch's checkpoint")


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def test_two_epochs_on_fashion_mnist_learn_and_report_the_contract(tmp_path):
    config = TrialConfig(
        name="fmnist-small", model=SMALL_NET, seed=0,
        data=DataConfig(train_size=2000, val_size=1000, test_size=1000, augment=False),
        train=TrainConfig(epochs=2, batch_size=64, lr=0.1, threads=1))
    report = Recorder()
    result = train_trial(config, report, checkpoint_dir=str(tmp_path))

    assert result.status == "finished" and result.error is None
    assert len(report.calls) == 2 and len(result.history) == 2
    first, last = result.history
    assert EPOCH_KEYS | {"test_loss", "test_error"} <= set(first)
    assert (first["epoch"], first["iteration"], last["iteration"]) == (1, 32, 64)
    # chance is 90% error; 64 steps of a tiny ResNet get far below it
    assert last["test_error"] < 0.5 and last["val_error"] < 0.5
    assert last["train_error"] < first["train_error"] < 0.9
    assert all(0 <= h[k] <= 1 for h in result.history for k in ("train_error", "val_error", "test_error"))
    # the last report adds status, params, macs and probes, and points at the checkpoint
    final, checkpoint = report.calls[-1]
    assert final is result.final or final == result.final
    assert final["status"] == "finished"
    assert final["params"] == count_params(build_model(SMALL_NET)) == result.params
    assert final["macs"] == result.macs > 0
    assert checkpoint == str(tmp_path / "checkpoint.pt") and (tmp_path / "checkpoint.pt").is_file()
    responses, grads = result.probes["layer_responses"], result.probes["gradient_norms"]
    assert len(responses) >= 7 and len(grads) >= 3          # depth 8: stem + 6 convs, 3 blocks
    assert all(math.isfinite(v) and v > 0 for v in [*responses.values(), *grads.values()])
    assert "status" not in report.calls[0][0]              # only the last report has extras


def _resume_config() -> TrialConfig:
    # iteration-based with a partial last epoch (4 + 4 + 2 steps), step schedule, augmentation
    return TrialConfig(
        name="resume", model=SMALL_NET.replace(width=0.25), seed=3,
        data=DataConfig(train_size=256, val_size=64, test_size=64, augment=True),
        train=TrainConfig(recipe="paper-cifar", epochs=None, iterations=10, batch_size=64,
                          lr=0.1, schedule="step", milestones=(6,), momentum=0.9,
                          nesterov=True, eval_every=2, threads=1))


def test_a_resumed_trial_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    config = _resume_config()
    straight = train_trial(config, Recorder(), checkpoint_dir=str(tmp_path / "a"))

    with pytest.raises(KeyboardInterrupt):
        train_trial(config, Recorder(stop_after=1), checkpoint_dir=str(tmp_path / "b"))
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed_report = Recorder()
    resumed = train_trial(config, resumed_report, checkpoint_dir=str(tmp_path / "b"))

    assert [m["epoch"] for m, _ in resumed_report.calls] == [2, 3]   # continued, not restarted
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert [h["iteration"] for h in straight.history] == [4, 8, 10]
    assert "test_error" not in straight.history[0] and "test_error" in straight.history[2]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    buffers_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    buffers_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(buffers_a, buffers_b))
    assert resumed.probes == straight.probes


def test_an_absurd_lr_diverges_without_an_exception(tmp_path):
    config = TrialConfig(
        name="diverge", model=SMALL_NET.replace(width=0.25), seed=0,
        data=DataConfig(train_size=256, val_size=64, test_size=64),
        train=TrainConfig(epochs=3, batch_size=64, lr=1e30, schedule="constant", threads=1))
    report = Recorder()
    result = train_trial(config, report, checkpoint_dir=str(tmp_path))
    assert result.status == "diverged"
    assert "non-finite training loss" in result.error
    assert len(result.history) >= 1 and not math.isfinite(result.history[-1]["train_loss"])
    assert report.calls[-1][0]["status"] == "diverged" and result.final["status"] == "diverged"
    assert result.params > 0 and set(result.probes) == {"layer_responses", "gradient_norms"}
    assert len(report.calls) == len(result.history)         # one report per epoch, the last with status


def _tiny(seed: int = 0) -> TrialConfig:
    return TrialConfig(name="tiny", model=SMALL_NET.replace(width=0.25), seed=seed,
                       data=DataConfig(train_size=128, val_size=64, test_size=64),
                       train=TrainConfig(epochs=1, batch_size=64, threads=1, probes=False))


def test_a_corrupt_checkpoint_is_reported_and_the_trial_restarts(tmp_path):
    fresh = train_trial(_tiny())
    (tmp_path / "checkpoint.pt").write_bytes(b"this is not a checkpoint")
    with pytest.warns(CheckpointWarning, match="unreadable.*starts from scratch"):
        again = train_trial(_tiny(), checkpoint_dir=str(tmp_path))
    assert again.status == "finished"
    assert without_timing(again.history) == without_timing(fresh.history)
    assert (tmp_path / "checkpoint.pt.corrupt").read_bytes() == b"this is not a checkpoint"
    # another trial's checkpoint is not resumed either
    with pytest.warns(CheckpointWarning, match="belongs to trial"):
        other = train_trial(_tiny(seed=1), checkpoint_dir=str(tmp_path))
    assert other.history[0]["train_loss"] != fresh.history[0]["train_loss"]


def test_a_checkpoint_that_does_not_fit_the_model_is_reported_and_the_trial_restarts(tmp_path):
    fresh = train_trial(_tiny(), checkpoint_dir=str(tmp_path))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["model"].pop("fc.weight")          # same trial id, but not this network's state
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.warns(CheckpointWarning, match="does not fit this trial"):
        again = train_trial(_tiny(), checkpoint_dir=str(tmp_path))
    assert again.status == "finished"
    assert without_timing(again.history) == without_timing(fresh.history)


def test_a_finished_checkpoint_is_not_trained_again(tmp_path):
    first = train_trial(_tiny(), checkpoint_dir=str(tmp_path))
    report = Recorder()
    second = train_trial(_tiny(), report, checkpoint_dir=str(tmp_path))
    assert len(report.calls) == 1 and report.calls[0][0]["status"] == "finished"
    assert without_timing(second.history) == without_timing(first.history)


def test_bf16_label_smoothing_grad_clipping_and_nesterov_run_on_the_cpu():
    config = _tiny().replace(train=TrainConfig(
        epochs=1, batch_size=64, threads=1, probes=False, precision="bf16",
        label_smoothing=0.1, grad_clip=1.0, nesterov=True, schedule="cosine", warmup_iters=1))
    result = train_trial(config)
    assert result.status == "finished"
    first = result.history[0]
    assert math.isfinite(first["train_loss"]) and math.isfinite(first["test_loss"])
    assert first["iteration"] == 2 and first["lr"] == pytest.approx(0.1)   # cosine from its peak


def test_an_image_folder_trial_trains_through_the_dataloader_path(tmp_path, image_tree):
    image_tree({"train": 4, "val": 2})
    config = TrialConfig(
        name="folder", seed=0,
        model=ModelConfig(depth=8, width=0.25, in_channels=3, image_size=32, num_classes=3),
        data=DataConfig(dataset="imagenet", root=str(tmp_path), val_size=3),
        train=TrainConfig(epochs=2, batch_size=4, threads=1))
    result = train_trial(config, checkpoint_dir=str(tmp_path / "ckpt"))
    assert result.status == "finished"
    assert [h["iteration"] for h in result.history] == [3, 6]      # 9 images, ragged batch kept
    assert result.history[-1]["test_error"] in (0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1)
    assert len(result.probes["layer_responses"]) >= 7


def test_the_test_only_pause_cue_holds_a_trial_after_epoch_n(tmp_path, monkeypatch):
    """workers.faults (fault tests): NAME.pause holding 1 makes that trial report epoch 1,
    then wait (its pid in NAME.paused) until the cue is removed; other trials do not wait."""
    import os
    import threading

    from workers.faults import FAULTS_ENV

    config = _resume_config()
    monkeypatch.setenv(FAULTS_ENV, str(tmp_path))
    (tmp_path / "other-trial.pause").write_text("1")
    assert [m["epoch"] for m, _ in _record(train_trial, config)] == [1, 2, 3]
    assert not (tmp_path / "other-trial.paused").exists()

    cue, paused = tmp_path / f"{config.name}.pause", tmp_path / f"{config.name}.paused"
    cue.write_text("1")
    report = Recorder()
    worker = threading.Thread(target=train_trial, args=(config, report), daemon=True)
    worker.start()
    deadline = time.monotonic() + 120
    while not paused.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert paused.read_text().strip() == str(os.getpid()), "the trial never paused"
    time.sleep(1.0)  # paused: epoch 2 (a fraction of a second) does not come
    assert worker.is_alive() and [m["epoch"] for m, _ in report.calls] == [1]
    cue.unlink()
    worker.join(timeout=120)
    assert not worker.is_alive() and [m["epoch"] for m, _ in report.calls] == [1, 2, 3]
    assert not paused.exists()

    cue.write_text("after-one")
    with pytest.raises(ConfigError, match="expected an epoch number >= 1, got 'after-one'"):
        train_trial(config, Recorder())


def _train_in_a_fork(config: TrialConfig, checkpoint_dir: str) -> int:
    """train_trial in a forked process (the die cue ends the process): its exit status."""
    import multiprocessing

    process = multiprocessing.get_context("fork").Process(
        target=train_trial, args=(config, None, checkpoint_dir))
    process.start()
    process.join(timeout=120)
    return process.exitcode


def test_the_test_only_die_cue_kills_every_try_that_reaches_epoch_n(tmp_path, monkeypatch):
    """workers.faults: NAME.die holding 2 kills the process before epoch 2, again after a
    resume from epoch 1's checkpoint, until the cue goes; then the trial ends as one that
    never died would."""
    from workers.faults import DIE_EXIT_STATUS, FAULTS_ENV
    from workers.trial import checkpoint_file

    config = _resume_config()
    cues, checkpoints = tmp_path / "cues", tmp_path / "ckpt"
    cues.mkdir()
    monkeypatch.setenv(FAULTS_ENV, str(cues))
    (cues / f"{config.name}.die").write_text("2")
    for tries in (1, 2):
        assert _train_in_a_fork(config, str(checkpoints)) == DIE_EXIT_STATUS
        assert len((cues / f"{config.name}.died").read_text().split()) == tries
        saved = torch.load(checkpoint_file(checkpoints), weights_only=True)
        assert saved["epoch"] == 1  # died before training epoch 2, both times

    (cues / f"{config.name}.die").unlink()
    resumed = train_trial(config, checkpoint_dir=str(checkpoints))
    monkeypatch.delenv(FAULTS_ENV)
    uninterrupted = train_trial(config)
    assert without_timing(resumed.history) == without_timing(uninterrupted.history)


def _record(train, config) -> list[tuple[dict, str | None]]:
    report = Recorder()
    train(config, report)
    return report.calls


def test_conv_nets_train_channels_last_on_the_cpu_deterministically(tmp_path):
    """The CPU engine's layout (workers.engine.uses_channels_last): a conv net's weights
    and batches are channels_last, an MLP's are not; a trial is as reproducible as before
    (same seed, same numbers) and its values agree with the NCHW step's up to rounding."""
    from workers.engine import EagerStep, uses_channels_last

    cpu = torch.device("cpu")
    conv, mlp = build_model(SMALL_NET), build_model(ModelConfig(family="mlp", depth=4))
    assert uses_channels_last(conv, cpu) and not uses_channels_last(mlp, cpu)

    config = _resume_config()
    first = train_trial(config, Recorder(), checkpoint_dir=str(tmp_path / "a"))
    second = train_trial(config, Recorder(), checkpoint_dir=str(tmp_path / "b"))
    assert without_timing(first.history) == without_timing(second.history)
    assert first.probes == second.probes
    saved = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    conv_weights = [w for w in saved.values() if w.dim() == 4]
    assert conv_weights and all(w.is_contiguous(memory_format=torch.channels_last)
                                for w in conv_weights)
    assert not all(w.is_contiguous() for w in conv_weights)  # (a 1-channel stem is both)

    # one step from the same weights in both layouts: the same loss and wrong count
    images = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(32) % 10
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model(SMALL_NET)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        step = EagerStep(model, config.train, cpu)
        assert step.channels_last  # the step converts NCHW batches for either model
        results.append([step(images, labels) for _ in range(3)])
    for (loss_a, wrong_a), (loss_b, wrong_b) in zip(*results):
        assert torch.allclose(loss_a, loss_b, rtol=1e-4) and wrong_a == wrong_b
