"""Named training recipes, resolved with a study's overrides into a `TrainConfig`.

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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from models.config import ConfigError, ModelConfig
from workers.config import TrainConfig, validate_train_config

PAPER_WARMUP_DEPTH = 110        # the paper's rule applies to 110 layers and deeper
PAPER_WARMUP_LR = 0.01
PAPER_WARMUP_UNTIL_ERROR = 0.8
PAPER_WARMUP_CAP = 2000         # iterations; the paper needed ~400

RECIPES: dict[str, TrainConfig] = {
    "paper-cifar": TrainConfig(
        recipe="paper-cifar", epochs=None, iterations=64_000, batch_size=128, lr=0.1,
        momentum=0.9, nesterov=False, weight_decay=1e-4, schedule="step",
        milestones=(32_000, 48_000), gamma=0.1),
    "paper-imagenet": TrainConfig(
        recipe="paper-imagenet", epochs=None, iterations=600_000, batch_size=256, lr=0.1,
        momentum=0.9, nesterov=False, weight_decay=1e-4, schedule="step",
        milestones=(150_000, 300_000, 450_000), gamma=0.1),
    "cosine": TrainConfig(
        recipe="cosine", epochs=10, iterations=None, batch_size=128, lr=0.1, momentum=0.9,
        nesterov=False, weight_decay=1e-4, schedule="cosine", warmup_iters=0),
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
