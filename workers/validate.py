"""Checks of the data and training settings a trial runs with.

Each function collects every problem and raises one `ConfigError` with one line per
problem: the key path (`train.<field>` / `data.<field>`), the value received and what is
allowed. `search_spaces` calls these at load time, the engine again before it starts.
"""

from __future__ import annotations

import math
import re

from models.config import ConfigError
from workers.config import DATASETS, PRECISIONS, SCHEDULES, DataConfig, TrainConfig

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def train_config_problems(train: TrainConfig, where: str = "train") -> list[str]:
    """Every problem with `train`, one message each (empty when it is valid)."""
    problems: list[str] = []

    def bad(field: str, allowed: str) -> None:
        problems.append(f"{where}.{field}: got {getattr(train, field)!r}; {allowed}")

    has_epochs, has_iterations = train.epochs is not None, train.iterations is not None
    if has_epochs == has_iterations:
        problems.append(f"{where}.epochs/{where}.iterations: got epochs={train.epochs!r}, "
                        f"iterations={train.iterations!r}; set exactly one of them")
    if has_epochs and not (_is_int(train.epochs) and train.epochs > 0):
        bad("epochs", "allowed: a positive integer")
    if has_iterations and not (_is_int(train.iterations) and train.iterations > 0):
        bad("iterations", "allowed: a positive integer (optimizer steps)")
    if not (_is_int(train.batch_size) and train.batch_size > 0):
        bad("batch_size", "allowed: a positive integer")
    if not (_is_number(train.lr) and train.lr > 0):
        bad("lr", "allowed: a number > 0")
    if not (_is_number(train.momentum) and 0 <= train.momentum < 1):
        bad("momentum", "allowed: 0 <= momentum < 1")
    if train.nesterov not in (True, False):
        bad("nesterov", "allowed: true or false")
    elif train.nesterov and _is_number(train.momentum) and train.momentum == 0:
        bad("nesterov", "nesterov needs train.momentum > 0")
    if not (_is_number(train.weight_decay) and train.weight_decay >= 0):
        bad("weight_decay", "allowed: a number >= 0")
    if train.schedule not in SCHEDULES:
        bad("schedule", f"allowed: {list(SCHEDULES)}")
    milestones = list(train.milestones)
    if not all(_is_int(m) and m > 0 for m in milestones) or milestones != sorted(set(milestones)):
        bad("milestones", "allowed: increasing positive iteration numbers")
    elif has_iterations and _is_int(train.iterations) and milestones and milestones[-1] >= train.iterations:
        bad("milestones", f"every milestone must be < train.iterations ({train.iterations})")
    if train.schedule != "step" and milestones:
        bad("milestones", "milestones are used only with train.schedule 'step'")
    if not (_is_number(train.gamma) and 0 < train.gamma <= 1):
        bad("gamma", "allowed: 0 < gamma <= 1")
    if not (_is_int(train.warmup_iters) and train.warmup_iters >= 0):
        bad("warmup_iters", "allowed: an integer >= 0")
    if train.warmup_lr is not None and not (_is_number(train.warmup_lr) and train.warmup_lr > 0):
        bad("warmup_lr", "allowed: null or a number > 0")
    if train.warmup_until_error is not None:
        if not (_is_number(train.warmup_until_error) and 0 < train.warmup_until_error <= 1):
            bad("warmup_until_error", "allowed: null or an error fraction in (0, 1], e.g. 0.8")
        if train.warmup_lr is None:
            bad("warmup_until_error", "needs train.warmup_lr (the lr used until then)")
    if not (_is_number(train.label_smoothing) and 0 <= train.label_smoothing < 1):
        bad("label_smoothing", "allowed: 0 <= label_smoothing < 1")
    if train.grad_clip is not None and not (_is_number(train.grad_clip) and train.grad_clip > 0):
        bad("grad_clip", "allowed: null (no clipping) or a max gradient norm > 0")
    if train.precision not in PRECISIONS:
        bad("precision", f"allowed: {list(PRECISIONS)}")
    if not (_is_int(train.eval_every) and train.eval_every > 0):
        bad("eval_every", "allowed: a positive integer (epochs)")
    if not (isinstance(train.device, str) and DEVICE_PATTERN.match(train.device)):
        bad("device", "allowed: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if train.threads is not None and not (_is_int(train.threads) and train.threads > 0):
        bad("threads", "allowed: null (torch's default) or a positive integer")
    for flag in ("cuda_graph", "compile", "probes"):
        if getattr(train, flag) not in (True, False):
            bad(flag, "allowed: true or false")
    return problems


def data_config_problems(data: DataConfig, where: str = "data") -> list[str]:
    """Every problem with `data` that can be seen without opening the files."""
    problems: list[str] = []
    if data.dataset not in DATASETS:
        problems.append(f"{where}.dataset: got {data.dataset!r}; allowed: {list(DATASETS)}")
    if not (_is_int(data.val_size) and data.val_size >= 0):
        problems.append(f"{where}.val_size: got {data.val_size!r}; allowed: an integer >= 0")
    for field in ("train_size", "test_size"):
        value = getattr(data, field)
        if value is not None and not (_is_int(value) and value > 0):
            problems.append(f"{where}.{field}: got {value!r}; allowed: null (all) or a positive integer")
    return problems


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


def validate_data_config(data: DataConfig) -> DataConfig:
    problems = data_config_problems(data)
    if problems:
        raise ConfigError("\n".join(problems))
    return data
