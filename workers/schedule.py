"""The learning rate as a pure function of the iteration (optimizer step, 0-based).

`lr_at(train, iteration, total, warmup_active)` is all the engine asks: no scheduler
object with hidden state, so a CUDA-graph step can keep the lr in a device tensor and just
`fill_` it before each replay, and a resumed trial recomputes the same value.

Phases (TrainConfig fields):
- Warm-up until an error (the paper's ResNet-110 trick: `warmup_lr` 0.01 until the training
  error < `warmup_until_error` 0.8, then `lr`): the only state is whether that warm-up is
  still on, tracked by `ErrorWarmup` and saved in checkpoints. `warmup_iters` > 0 caps it.
- Fixed warm-up (`warmup_iters` > 0, no `warmup_until_error`): the first `warmup_iters`
  steps use `warmup_lr`, or ramp linearly from lr/warmup_iters up to `lr` when it is None.
- Then "step": lr * gamma^(number of milestones <= iteration) (milestones in iterations);
  "cosine": lr * (1 + cos(pi * t)) / 2 with t going 0 -> 1 from the end of a fixed warm-up
  to the last step; "constant": lr.
"""

from __future__ import annotations

import math

import torch

from workers.config import TrainConfig


def lr_at(train: TrainConfig, iteration: int, total_iterations: int,
          warmup_active: bool = False) -> float:
    """Learning rate of step `iteration` in a run of `total_iterations` steps."""
    if train.warmup_until_error is not None:
        capped = train.warmup_iters > 0 and iteration >= train.warmup_iters
        if warmup_active and not capped:
            return float(train.warmup_lr if train.warmup_lr is not None else train.lr)
        warmup_end = 0
    else:
        warmup_end = train.warmup_iters
        if iteration < warmup_end:
            if train.warmup_lr is not None:
                return float(train.warmup_lr)
            return train.lr * (iteration + 1) / warmup_end
    if train.schedule == "step":
        passed = sum(1 for m in train.milestones if iteration >= m)
        return train.lr * train.gamma ** passed
    if train.schedule == "cosine":
        progress = (iteration - warmup_end) / max(1, total_iterations - warmup_end)
        return train.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return float(train.lr)


class ErrorWarmup:
    """Is the warm-up-until-error phase still on?

    The engine passes each step's number of wrong predictions (a device tensor, no sync);
    every `check_every` steps the error over those steps is read once (one host sync) and,
    when it is below the threshold, the warm-up ends for good; it also ends after
    `train.warmup_iters` steps when that cap is set. The window restarts at each
    epoch (`start_epoch`) so a resumed run decides exactly like an uninterrupted one.
    """

    def __init__(self, train: TrainConfig, check_every: int = 20):
        self.threshold = train.warmup_until_error
        self.cap = train.warmup_iters       # > 0: the warm-up ends after this many steps
        self.active = self.threshold is not None
        self.ended_at: int | None = None
        self.check_every = check_every
        self._wrong: torch.Tensor | int = 0
        self._seen = 0
        self._steps = 0

    def start_epoch(self) -> None:
        self._wrong, self._seen, self._steps = 0, 0, 0

    def observe(self, iteration: int, wrong: torch.Tensor, count: int) -> None:
        """Record step `iteration`'s wrong predictions out of `count` images."""
        if not self.active:
            return
        if self.cap and iteration + 1 >= self.cap:
            # lr_at stops the warm-up lr here anyway; end it so the error is no longer read
            self.active, self.ended_at = False, self.cap
            return
        self._wrong = self._wrong + wrong
        self._seen += count
        self._steps += 1
        if self._steps >= self.check_every:
            if float(self._wrong) / self._seen < self.threshold:
                self.active, self.ended_at = False, iteration + 1
            self.start_epoch()

    def state_dict(self) -> dict:
        return {"active": self.active, "ended_at": self.ended_at}

    def load_state_dict(self, state: dict) -> None:
        self.active, self.ended_at = bool(state["active"]), state["ended_at"]
