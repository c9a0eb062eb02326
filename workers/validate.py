"""Checks of the data and training settings a trial runs with.

Each field's own rule (type, choices, bounds) is declared once on `DataConfig` /
`TrainConfig` and checked by `models.config.field_problems`; the rules between fields
are here. Every problem is one line: the key path (`train.<field>` / `data.<field>`),
the value received and what is allowed. `search_spaces` calls these at load time, the
engine again before it starts.
"""

from __future__ import annotations

import re

from models.config import ConfigError, field_problems, invalid_fields
from workers.config import DataConfig, TrainConfig

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def train_config_problems(train: TrainConfig, where: str = "train") -> list[str]:
    """Every problem with `train`, one message each (empty when it is valid)."""
    problems = field_problems(train, where)
    bad_fields = invalid_fields(train)

    def ok(*fields: str) -> bool:
        return not bad_fields.intersection(fields)

    def bad(field: str, allowed: str) -> None:
        problems.append(f"{where}.{field}: got {getattr(train, field)!r}; {allowed}")

    has_epochs, has_iterations = train.epochs is not None, train.iterations is not None
    if has_epochs == has_iterations:
        problems.append(f"{where}.epochs/{where}.iterations: got epochs={train.epochs!r}, "
                        f"iterations={train.iterations!r}; set exactly one of them")
    if ok("nesterov", "momentum") and train.nesterov and train.momentum == 0:
        bad("nesterov", "nesterov needs train.momentum > 0")
    milestones = list(train.milestones)
    if ok("milestones"):
        if milestones != sorted(set(milestones)):
            bad("milestones", "allowed: increasing positive iteration numbers")
        elif ok("iterations") and has_iterations and milestones \
                and milestones[-1] >= train.iterations:
            bad("milestones", f"every milestone must be < train.iterations "
                              f"({train.iterations})")
    if train.schedule != "step" and milestones:
        bad("milestones", "milestones are used only with train.schedule 'step'")
    if train.warmup_until_error is not None and train.warmup_lr is None:
        bad("warmup_until_error", "needs train.warmup_lr (the lr used until then)")
    if ok("device") and not DEVICE_PATTERN.match(train.device):
        bad("device", "allowed: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return problems


def data_config_problems(data: DataConfig, where: str = "data") -> list[str]:
    """Every problem with `data` that can be seen without opening the files."""
    return field_problems(data, where)


def model_data_problems(model, dataset: str, channels: int, size: int,
                        classes: int) -> list[str]:
    """The network (a ModelConfig) must take the data set's `channels` x `size` x `size`
    images and cover its `classes`; one message per mismatch, naming the field to change.
    Checked by the study loader before anything runs and by the worker when it loads data."""
    problems = []
    if model.in_channels != channels:
        problems.append(f"model.in_channels: got {model.in_channels}; data set {dataset!r} "
                        f"has {channels}-channel images")
    if model.image_size != size:
        problems.append(f"model.image_size: got {model.image_size}; data set {dataset!r} "
                        f"has {size}x{size} images")
    if model.num_classes < classes:
        problems.append(f"model.num_classes: got {model.num_classes}; data set {dataset!r} "
                        f"has {classes} classes")
    return problems


def validate_train_config(train: TrainConfig) -> TrainConfig:
    """Return `train` unchanged, or raise ConfigError listing all its problems."""
    problems = train_config_problems(train)
    if problems:
        raise ConfigError("\n".join(problems))
    return train
