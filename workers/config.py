"""Resolved, plain-data configuration of one trial (data, recipe, resources) and its rules.

`TrialConfig` is what a worker receives. It is frozen, round-trips through JSON
(`to_dict`/`from_dict`), and has a stable content hash, `trial_id`, over what determines
the result (model, data, train, seed) but not over where it runs (resources) or its name.

Every field is declared once, with its default, rule and description (`setting`, see
models/config.py); the study file's `DataSpec`/`TrainSpec`/`ResourcesSpec` and the JSON
Schema are derived from these declarations (search_spaces/schema.py).

The rules between fields follow the configs (`train_config_problems`,
`data_config_problems`, `model_data_problems`, `validate_train_config`). Every problem is
one line: the key path (`train.<field>` / `data.<field>`), the value received and what is
allowed. `search_spaces` calls these at load time, the worker again before it starts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from models.config import (ConfigError, ModelConfig, field_problems, known_fields,
                           invalid_fields, setting)
from workers.data.datasets import DATASET_FACTS

DATASETS = (*DATASET_FACTS, "synthetic")  # the synthetic set has no fixed facts
SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class DataConfig:
    """Which images a trial trains and evaluates on."""

    dataset: str = setting("fashion-mnist", choices=DATASETS,
                           doc="the images to train and evaluate on")
    root: str | None = setting(
        None, doc="where to look; null: $RESWEEP_DATA, then (fashion-mnist) "
                  "/usr/share/datasets/fashion-mnist, then ./data")
    train_size: int | None = setting(
        None, gt=0, le=100_000_000,
        doc="first N training images (after the validation split); null: all")
    val_size: int = setting(5000, ge=0, le=100_000_000,
                            doc="held out of the training set for validation (paper: 5000 "
                                "of 50k)")
    test_size: int | None = setting(None, gt=0, le=100_000_000,
                                    doc="first N test images; null: all")
    augment: bool = setting(True, doc="pad-4-and-crop + horizontal flip of the training "
                                      "batches (on the device)")
    download: bool = setting(False, doc="let torchvision download where a network exists")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataConfig":
        return cls(**known_fields(cls, data, "data"))


@dataclass(frozen=True)
class TrainConfig:
    """A resolved training recipe (see `workers.recipes` for the named ones).

    Length: exactly one of `epochs` or `iterations` (optimizer steps). With `iterations`
    training stops after exactly that many steps; the last epoch may be partial.
    schedule "step": lr is multiplied by `gamma` at each of `milestones` (iterations).
    schedule "cosine": cosine decay from `lr` to 0 over the run after `warmup_iters`.
    warmup_lr / warmup_until_error: the paper's ResNet-110 trick: train at `warmup_lr`
    until the running training error falls below `warmup_until_error` (e.g. 0.8), at most
    `warmup_iters` steps, then switch to `lr`.

    Upper bounds (`le=`) here and in DataConfig and Resources are caps against hostile or
    mistyped values; search_spaces/README.md, "Caps", gives their reasons.
    """

    recipe: str = setting("cosine", doc="a name in workers.recipes.RECIPES")
    epochs: int | None = setting(10, gt=0, le=10_000,
                                 doc="passes over the training set (or iterations)")
    iterations: int | None = setting(None, gt=0, le=10_000_000,
                                     doc="optimizer steps (or epochs)")
    batch_size: int = setting(128, gt=0, le=65_536, doc="images per optimizer step")
    lr: float = setting(0.1, gt=0, doc="learning rate (the peak of a schedule)")
    momentum: float = setting(0.9, ge=0, lt=1, doc="SGD momentum")
    nesterov: bool = setting(False, doc="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = setting(1e-4, ge=0, doc="SGD weight decay (L2)")
    schedule: str = setting("cosine", choices=SCHEDULES,
                            doc="step: lr x gamma at each milestone; cosine: decay to 0 "
                                "after warmup_iters; constant")
    milestones: tuple[int, ...] = setting(
        (), gt=0, le=10_000_000,
        doc="iterations at which a step schedule multiplies lr by gamma")
    gamma: float = setting(0.1, gt=0, le=1, doc="lr factor at each milestone")
    warmup_iters: int = setting(0, ge=0, le=10_000_000,
                                doc="linear warm-up steps; with warmup_until_error the "
                                    "longest warm-up")
    warmup_lr: float | None = setting(None, gt=0, doc="lr until the training error falls "
                                                      "below warmup_until_error")
    warmup_until_error: float | None = setting(
        None, gt=0, le=1, doc="training error fraction that ends the warm-up (paper: 0.8)")
    label_smoothing: float = setting(0.0, ge=0, lt=1, doc="cross-entropy label smoothing")
    grad_clip: float | None = setting(None, gt=0, doc="max gradient norm; null: no clipping")
    precision: str = setting("fp32", choices=PRECISIONS,
                             doc="fp32, or bf16 autocast")
    eval_every: int = setting(1, gt=0, le=10_000,
                              doc="test error every k epochs (and after the last)")
    device: str = setting("auto", doc="auto | cpu | cuda | cuda:N | mps")
    threads: int | None = setting(None, gt=0, le=1024,
                                  doc="torch threads per trial; null: torch's default")
    cuda_graph: bool = setting(True, doc="replay the training step as a CUDA graph (CUDA)")
    compile: bool = setting(False, doc="torch.compile the model")
    probes: bool = setting(True, doc="after the last epoch: layer responses and gradient "
                                     "norms")

    def __post_init__(self) -> None:
        if not isinstance(self.milestones, tuple):
            object.__setattr__(self, "milestones", tuple(self.milestones))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return cls(**known_fields(cls, data, "train"))


@dataclass(frozen=True)
class Resources:
    """What one trial asks of a Ray worker: CPUs and a GPU fraction (0.25 = 4 per GPU)."""

    cpu: float = setting(1.0, gt=0, le=1024, doc="CPUs per trial")
    gpu: float = setting(0.0, ge=0, le=64, doc="a fraction below 1, or whole GPUs")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Resources":
        return cls(**known_fields(cls, data, "resources"))


# Fields that change where or how fast a trial runs but not what it computes; they are
# left out of `trial_id` so the same trial on another machine is recognised as done.
NOT_HASHED_TRAIN = ("device", "threads", "eval_every")


@dataclass(frozen=True)
class TrialConfig:
    """One fully resolved trial."""

    name: str
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    resources: Resources = field(default_factory=Resources)
    study: str = "adhoc"

    @functools.cached_property
    def trial_id(self) -> str:
        """12 hex digits of SHA-256 over the canonical JSON of model, data, train, seed.

        Computed once per instance (the config is frozen, so it cannot go stale;
        cached_property writes the instance's __dict__, which frozen allows, and neither
        equality, repr nor `to_dict` sees the cache)."""
        before, after = self._hashed_json
        seed = repr(self.seed) if type(self.seed) is int else json.dumps(self.seed)
        blob = before + seed + after
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @functools.cached_property
    def _hashed_json(self) -> tuple[str, str]:
        """What `trial_id` hashes, before and after the seed's value: the canonical JSON
        ``json.dumps({"model": ..., "data": ..., "train": ..., "seed": S},
        sort_keys=True, separators=(",", ":"))`` is exactly ``before + json.dumps(S) +
        after`` (sorted keys: data, model, seed, train). `replace` hands it on to a
        trial that differs only in the seed, so the seeds of a cell encode it once."""
        train = {k: v for k, v in plain_dict(self.train).items()
                 if k not in NOT_HASHED_TRAIN}
        return (f'{{"data":{_canonical(plain_dict(self.data))},'
                f'"model":{_canonical(plain_dict(self.model))},"seed":',
                f',"train":{_canonical(train)}}}')

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "study": self.study, "seed": self.seed,
                "trial_id": self.trial_id, "model": plain_dict(self.model),
                "data": plain_dict(self.data), "train": plain_dict(self.train),
                "resources": plain_dict(self.resources)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialConfig":
        data = {k: v for k, v in data.items() if k != "trial_id"}  # derived, not stored
        data = known_fields(cls, data, "trial")
        return cls(name=data["name"], study=data.get("study", "adhoc"),
                   seed=int(data.get("seed", 0)),
                   model=ModelConfig.from_dict(data["model"]),
                   data=DataConfig.from_dict(data.get("data", {})),
                   train=TrainConfig.from_dict(data.get("train", {})),
                   resources=Resources.from_dict(data.get("resources", {})))

    def replace(self, **changes: Any) -> "TrialConfig":
        """A copy with `changes`. What the id is computed from is handed on when the
        changes leave it alone: all of it for a new name, resources or study; all but the
        seed for a new seed (a planner makes 10,000 trials from 1,000 cells this way)."""
        new = dataclasses.replace(self, **changes)
        if not changes.keys() & {"model", "data", "train"}:
            carried = ("_hashed_json",) if "seed" in changes else ("_hashed_json", "trial_id")
            for key in carried:
                if key in self.__dict__:
                    new.__dict__[key] = self.__dict__[key]
        return new


def _canonical(content: dict[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def plain_dict(config: Any) -> dict[str, Any]:
    """`config.to_dict()` of a flat config (ModelConfig, DataConfig, TrainConfig,
    Resources: fields of plain values, the tuple-typed ones as lists), built without
    `dataclasses.asdict`'s recursive deep copy. A planner converts every trial (10,000
    in a large grid) and asdict is ~10x slower; the result equals `to_dict()`
    (tests/search_spaces/test_plan_scale.py checks each class)."""
    names, tuple_fields = _layout(type(config))
    out = dict(vars(config))             # the fields, in declaration order
    if len(out) != len(names):           # something else is stored on the instance
        out = {name: getattr(config, name) for name in names}
    for name in tuple_fields:
        if out[name] is not None:
            out[name] = list(out[name])
    return out


@functools.lru_cache(maxsize=None)
def _layout(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(field names, names of the fields annotated as tuples) of a config class."""
    hints = typing.get_type_hints(cls)

    def is_tuple(hint) -> bool:
        return typing.get_origin(hint) is tuple or any(
            typing.get_origin(arg) is tuple for arg in typing.get_args(hint))

    names = tuple(f.name for f in dataclasses.fields(cls))
    return names, tuple(name for name in names if is_tuple(hints[name]))


# ---- rules between fields -------------------------------------------------------------

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
