"""`train_trial(config, report, checkpoint_dir=None) -> TrialResult`: one trial, start to end.

The loop, per epoch: shuffled augmented batches from `workers.data`, the lr from
`workers.recipes.lr_at` (a pure function of the iteration), one `TrainStep` call per
batch (`workers.engine`), then validation (every epoch, when there is a validation split)
and test (every `train.eval_every` epochs and after the last), a checkpoint, and one
`report(metrics, checkpoint_path)` call. After the last epoch: the model probes, the
parameter and MAC counts, and the status. The keys and statuses reported are the
contract in `workers.results`.

Metrics stay on the device during an epoch (loss and wrong-prediction sums); the host
reads them once per epoch, plus once every `DIVERGENCE_CHECK_EVERY` steps to stop a
diverged run early (and, while an error-based warm-up is on, once every
`ErrorWarmup.check_every` steps), so reporting costs nothing measurable.

Length: with `train.epochs`, every epoch is one pass over the training split; with
`train.iterations`, training stops after exactly that many steps (the last epoch may be
partial). The ragged last batch of an epoch is kept by the eager step and dropped only
when the step needs a static batch (a captured CUDA graph).

Faults: a non-finite training loss ends the trial with status "diverged" (no exception);
the epoch it happened in is reported with its train metrics. Other exceptions propagate
to the caller (Ray retries them; `resweep train` shows them); invalid settings and missing
data raise `ConfigError` before training starts. Whichever way a trial ends, its step is
closed (a CUDA graph's memory pool released) before `train_trial` returns or raises.
Fault tests pause a trial, or kill its process, at a known epoch through the test-only
cues of `workers.faults` (unset outside tests: nothing happens).

Checkpoints, at each epoch end: one file, `<checkpoint_dir>/checkpoint.pt`, written
atomically. It holds everything a resumed trial needs to continue exactly like an
uninterrupted one: model and optimizer state, the data generator (shuffling +
augmentation), torch's global RNG states, the warm-up state (the lr itself is a function
of the iteration), epoch, iteration, elapsed time and the metrics history; next to it,
`history.json` holds that history alone, for the driver. The files, how they are written
and what an unreadable one means: `workers.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from models import build_model, count_macs, count_params, gradient_norms, layer_responses
from models.config import ConfigError
from workers.checkpoints import (CheckpointWarning, checkpoint_file, load_checkpoint,
                                 save_checkpoint, save_history)
from workers.config import TrialConfig, data_config_problems, train_config_problems
from workers.data import TrialData, load_data
from workers.engine import (TrainStep, evaluate, make_train_step, pick_device,
                            uses_channels_last)
from workers.faults import FaultCues
from workers.recipes import ErrorWarmup, lr_at
from workers.results import (DIVERGED, ELAPSED_S, EPOCH, FINISHED, GRADIENT_NORMS,
                             IMAGES_PER_S, ITERATION, LAYER_RESPONSES, LR, MACS, PARAMS,
                             PROBES, PROBE_KINDS, STATUS, TEST_ERROR, TEST_LOSS,
                             TRAIN_ERROR, TRAIN_LOSS, VAL_ERROR, VAL_LOSS, ordered)

Report = Callable[[dict, "str | None"], None]

PROBE_IMAGES = 256

DIVERGENCE_CHECK_EVERY = 50   # steps between host reads of the running loss


@dataclass
class TrialResult:
    """What a trial produced. `final` is the last report (with status, params, macs, probes)."""

    status: str
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, dict[str, float]] = field(default_factory=dict)
    params: int = 0
    macs: int = 0
    error: str | None = None
    step_class: str = ""          # the TrainStep that ran: "GraphStep" or "EagerStep"
    captured: bool = False        # True when it ran as a replayed CUDA graph (no fallback)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Progress:
    """The loop's position; saved in and restored from checkpoints."""

    epoch: int = 0
    iteration: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)           # also seeds every CUDA device


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the trial ------------------------------------------------------------------------

class _Trial:
    """One trial's objects and its loop (private: the API is `train_trial`)."""

    def __init__(self, config: TrialConfig, report: Report | None, checkpoint_dir: str | None):
        problems = train_config_problems(config.train) + data_config_problems(config.data)
        if problems:
            raise ConfigError("\n".join(problems))
        self.config, self.train = config, config.train
        self.report = report or (lambda metrics, checkpoint_path: None)
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_path = checkpoint_file(checkpoint_dir) if checkpoint_dir else None
        self.faults = FaultCues.from_env(config.name)  # None but in fault tests
        if self.train.threads is not None:
            torch.set_num_threads(self.train.threads)
        self.device = pick_device(self.train.device)
        _seed_everything(config.seed)
        cpus = int(config.resources.cpu)
        self.data: TrialData = load_data(config, self.device, workers=cpus if cpus > 1 else 0)
        self.model = build_model(config.model).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if uses_channels_last(self.model, self.device):  # conv nets, CPU too (engine doc)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.step: TrainStep = make_train_step(self.model, self.train, self.device)
        batch = self.train.batch_size
        self.steps_per_epoch = self.data.steps_per_epoch(batch, self.step.static_batch)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size: got {batch}; the training split has only "
                              f"{self.data.counts['train']} images (set data.train_size or a "
                              "smaller batch)")
        if self.train.iterations is not None:
            self.total_iterations = self.train.iterations
            self.total_epochs = math.ceil(self.total_iterations / self.steps_per_epoch)
        else:
            self.total_epochs = self.train.epochs
            self.total_iterations = self.total_epochs * self.steps_per_epoch
        self.warmup = ErrorWarmup(self.train)
        self.progress = _Progress()

    # -- checkpoints -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        p = self.progress
        return {"trial_id": self.config.trial_id, "epoch": p.epoch, "iteration": p.iteration,
                "elapsed_s": p.elapsed_s, "history": p.history,
                "model": self.model.state_dict(), "optimizer": self.step.optimizer.state_dict(),
                "data": self.data.state_dict(), "warmup": self.warmup.state_dict(),
                "rng": _rng_state()}

    def resume(self) -> None:
        if self.checkpoint_path is None:
            return
        state = load_checkpoint(self.checkpoint_path, self.config.trial_id)
        if state is None:
            return
        try:
            self.model.load_state_dict(state["model"])
            self.step.optimizer.load_state_dict(state["optimizer"])
            self.data.load_state_dict(state["data"])
            self.warmup.load_state_dict(state["warmup"])
            _set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            warnings.warn(f"checkpoint {self.checkpoint_path}: does not fit this trial "
                          f"({type(err).__name__}: {err}); the trial starts from scratch",
                          CheckpointWarning, stacklevel=2)
            self.close()
            self.__init__(self.config, self.report, self.checkpoint_dir)  # fresh objects
            return
        self.progress = _Progress(state["epoch"], state["iteration"], state["elapsed_s"],
                                  list(state["history"]))

    # -- the loop ----------------------------------------------------------------------
    def _train_epoch(self) -> dict[str, Any]:
        """One pass (or the remaining steps); returns the epoch's train metrics."""
        p, step, device = self.progress, self.step, self.device
        steps = min(self.steps_per_epoch, self.total_iterations - p.iteration)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        wrong_sum = torch.zeros((), dtype=torch.int64, device=device)
        seen, lr, finite = 0, self.train.lr, True
        self.model.train()
        self.warmup.start_epoch()
        batches = self.data.train_batches(self.train.batch_size, step.static_batch)
        started = time.perf_counter()
        for index, (images, labels) in zip(range(steps), batches):
            lr = lr_at(self.train, p.iteration, self.total_iterations, self.warmup.active)
            step.set_lr(lr)
            loss, wrong = step(images, labels)
            count = labels.shape[0]
            loss_sum += loss.double() * count
            wrong_sum += wrong
            seen += count
            self.warmup.observe(p.iteration, wrong, count)
            p.iteration += 1
            if (index + 1) % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                finite = False
                break
        train_loss, train_error = float(loss_sum) / seen, int(wrong_sum) / seen
        seconds = time.perf_counter() - started
        return {ITERATION: p.iteration, LR: lr, TRAIN_LOSS: train_loss,
                TRAIN_ERROR: train_error, IMAGES_PER_S: seen / max(seconds, 1e-9),
                "_finite": finite and math.isfinite(train_loss)}

    def _evaluate(self, split: str) -> tuple[float, float]:
        return evaluate(self.model, self.data.eval_batches(split), self.device,
                        self.train.precision)

    def _probes(self, diverged: bool) -> dict[str, dict[str, float]]:
        if not self.train.probes:
            return {kind: {} for kind in PROBE_KINDS}
        images, labels = self.data.probe_batch(PROBE_IMAGES)
        try:
            return {LAYER_RESPONSES: layer_responses(self.model, images),
                    GRADIENT_NORMS: gradient_norms(self.model, images, labels)}
        except Exception as err:  # a NaN model may break a probe; the trial still ends cleanly
            if not diverged:
                raise
            warnings.warn(f"probes skipped on the diverged model: {err}", RuntimeWarning)
            return {kind: {} for kind in PROBE_KINDS}

    def run(self) -> TrialResult:
        p = self.progress
        clock = time.perf_counter()
        elapsed_before = p.elapsed_s
        status, error = FINISHED, None
        while p.epoch < self.total_epochs:
            if self.faults is not None:
                self.faults.before_epoch(p.epoch + 1)
            metrics = self._train_epoch()
            finite = metrics.pop("_finite")
            p.epoch += 1
            metrics[EPOCH] = p.epoch
            if not finite:
                status = DIVERGED
                error = f"non-finite training loss in epoch {p.epoch} (by iteration {p.iteration})"
            else:
                if self.data.counts["val"]:
                    metrics[VAL_LOSS], metrics[VAL_ERROR] = self._evaluate("val")
                if p.epoch % self.train.eval_every == 0 or p.epoch == self.total_epochs:
                    metrics[TEST_LOSS], metrics[TEST_ERROR] = self._evaluate("test")
            p.elapsed_s = elapsed_before + time.perf_counter() - clock
            metrics[ELAPSED_S] = p.elapsed_s
            metrics = ordered(metrics)
            p.history.append(metrics)
            checkpoint = None
            if finite and self.checkpoint_path is not None:
                save_history(self.checkpoint_path.parent, self.config.trial_id, p.history,
                             final=p.epoch == self.total_epochs)
                save_checkpoint(self.checkpoint_path, self._state())
                checkpoint = str(self.checkpoint_path)
            if not finite or p.epoch == self.total_epochs:
                break
            self.report(metrics, checkpoint)
            if self.faults is not None:
                self.faults.after_report(p.epoch)
        else:  # resumed from the last epoch's checkpoint: nothing left to train
            checkpoint = str(self.checkpoint_path) if self.checkpoint_path else None
        return self._finish(status, error, checkpoint)

    def _finish(self, status: str, error: str | None, checkpoint: str | None) -> TrialResult:
        probes = self._probes(diverged=status == DIVERGED)
        params, macs = count_params(self.model), count_macs(self.config.model)
        last = self.progress.history[-1] if self.progress.history else {EPOCH: 0, ITERATION: 0}
        final = {**last, STATUS: status, PARAMS: params, MACS: macs, PROBES: probes}
        self.report(final, checkpoint)
        return TrialResult(status=status, history=list(self.progress.history), final=final,
                           probes=probes, params=params, macs=macs, error=error,
                           step_class=type(self.step).__name__,
                           captured=bool(self.step.captured))

    def close(self) -> None:
        """Release the trial's device memory now, not at the next garbage collection: the
        step's (a CUDA graph's pool), then the model, optimizer and data set, whose memory
        the allocator's cache hands back to the GPU. The next trial in this process (Ray's
        reuse_actors) and packed neighbours get it. The trial is not used after this.
        Safe to call twice (a resume that rebuilds the trial closes it first, and a rebuild
        that raises reaches train_trial's `finally` with no step)."""
        if getattr(self, "step", None) is not None:
            self.step.close()
        self.step = self.model = self.data = None      # nothing else holds them (no cycle)
        device = getattr(self, "device", None)
        if device is not None and device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.empty_cache()


def train_trial(config: TrialConfig, report: Report | None = None,
                checkpoint_dir: str | None = None) -> TrialResult:
    """Train one trial; see the module docstring.

    report:         called once per epoch as `report(metrics, checkpoint_path | None)`; the
                    last call (last epoch, or the one that diverged) adds status, params,
                    macs and probes.
    checkpoint_dir: where `checkpoint.pt` is written at each epoch end; an existing one is
                    resumed (a corrupt one is reported with a warning and ignored).
    """
    trial = _Trial(config, report, checkpoint_dir)
    try:
        trial.resume()
        return trial.run()
    finally:
        trial.close()
