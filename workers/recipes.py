"""Named training recipes, resolved into a `TrainConfig`, and the lr schedule they define.

- `paper-cifar`: He et al. 2015, Sec. 4.2 (CIFAR-10): batch 128, SGD momentum 0.9, weight
  decay 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k. The 45k/5k
  train/validation split belongs to the data (`data.val_size: 5000`). For nets of 110
  layers and more the paper warms up at lr 0.01 until the training error is below 80%
  (about 400 iterations): pass the model to `resolve_recipe` and that rule is applied
  (capped at `PAPER_WARMUP_CAP` steps, a safety net the paper does not need to state).
- `paper-imagenet`: Sec. 3.4: batch 256, lr 0.1 "divided by 10 when the error plateaus",
  up to 60e4 iterations, weight decay 1e-4, momentum 0.9. The plateaus are approximated by a
  fixed step schedule: /10 every 150k iterations (= every 30 epochs at batch 256 on 1.28M
  images, torchvision's reference recipe), i.e. at 150k, 300k and 450k.
- `cosine`: short schedules for demos and searches: `epochs` (10), peak `lr` (0.1),
  optional linear warm-up over `warmup_iters` steps, cosine decay to 0.

Every field can be overridden (`resolve_recipe("paper-cifar", {"iterations": 6400,
"milestones": [3200, 4800]})`); setting only one of epochs/iterations clears the other.

The learning rate a recipe defines is a pure function of the iteration (optimizer step,
0-based): `lr_at(train, iteration, total, warmup_active)` is all the engine asks. No
scheduler object with hidden state, so a CUDA-graph step can keep the lr in a device
tensor and just `fill_` it before each replay, and a resumed trial recomputes the same
value. Phases (TrainConfig fields):
- Warm-up until an error (the paper's ResNet-110 trick: `warmup_lr` 0.01 until the training
  error < `warmup_until_error` 0.8, then `lr`): the only state is whether that warm-up is
  still on, tracked by `ErrorWarmup` and saved in checkpoints. `warmup_iters` > 0 caps it.
- Fixed warm-up (`warmup_iters` > 0, no `warmup_until_error`): the first `warmup_iters`
  steps use `warmup_lr`, or ramp linearly from lr/warmup_iters up to `lr` when it is None.
- Then "step": lr * gamma^(number of milestones <= iteration) (milestones in iterations);
  "cosine": lr * (1 + cos(pi * t)) / 2 with t going 0 -> 1 from the end of a fixed warm-up
  to the last step; "constant": lr.

Importing this module imports no torch (the study planner resolves recipes).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Mapping

from models.config import ConfigError, ModelConfig
from workers.config import TrainConfig, validate_train_config

if TYPE_CHECKING:
    import torch

PAPER_WARMUP_DEPTH = 110        # the paper's rule applies to 110 layers and deeper
PAPER_WARMUP_LR = 0.01
PAPER_WARMUP_UNTIL_ERROR = 0.8
PAPER_WARMUP_CAP = 2000         # iterations; the paper needed ~400

# The paper recipes spell out every value of the paper (He et al. 2015, Sec. 4.2 and 3.4),
# so that changing a TrainConfig default can never change them; the short "cosine" recipe
# is TrainConfig's defaults, declared once in workers/config.py.
RECIPES: dict[str, TrainConfig] = {
    "paper-cifar": TrainConfig(
        recipe="paper-cifar", epochs=None, iterations=64_000, batch_size=128, lr=0.1,
        momentum=0.9, nesterov=False, weight_decay=1e-4, schedule="step",
        milestones=(32_000, 48_000), gamma=0.1),
    "paper-imagenet": TrainConfig(
        recipe="paper-imagenet", epochs=None, iterations=600_000, batch_size=256, lr=0.1,
        momentum=0.9, nesterov=False, weight_decay=1e-4, schedule="step",
        milestones=(150_000, 300_000, 450_000), gamma=0.1),
    "cosine": TrainConfig(),
}

_WARMUP_FIELDS = ("warmup_lr", "warmup_until_error", "warmup_iters")


def _depth_rules(name: str, model: ModelConfig | None) -> dict[str, Any]:
    """Recipe settings that depend on the network (the paper's ResNet-110 warm-up)."""
    if (name == "paper-cifar" and model is not None and model.family == "cifar"
            and model.depth >= PAPER_WARMUP_DEPTH):
        return {"warmup_lr": PAPER_WARMUP_LR, "warmup_until_error": PAPER_WARMUP_UNTIL_ERROR,
                "warmup_iters": PAPER_WARMUP_CAP}
    return {}


def resolve_recipe(name: str, overrides: Mapping[str, Any] | None = None,
                   model: ModelConfig | None = None) -> TrainConfig:
    """The recipe `name` with `overrides` applied, validated.

    model: when given, depth-dependent rules apply (paper-cifar: warm-up for depth >= 110)
    unless the overrides set any warm-up field themselves.
    Raises ConfigError for an unknown recipe, unknown fields or invalid values.
    """
    if name not in RECIPES:
        raise ConfigError(f"train.recipe: got {name!r}; allowed: {list(RECIPES)}")
    overrides = dict(overrides or {})
    allowed = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError("\n".join(f"train.{key}: unknown field; allowed: {allowed}"
                                    for key in unknown))
    changes: dict[str, Any] = {}
    if not any(key in overrides for key in _WARMUP_FIELDS):
        changes.update(_depth_rules(name, model))
    if "epochs" in overrides and "iterations" not in overrides:
        changes["iterations"] = None
    if "iterations" in overrides and "epochs" not in overrides:
        changes["epochs"] = None
    changes.update(overrides)
    changes["recipe"] = name
    return validate_train_config(dataclasses.replace(RECIPES[name], **changes))


# ---- the learning rate of each step ---------------------------------------------------

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
