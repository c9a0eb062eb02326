"""Resolved, plain-data configuration of one trial: data, training recipe, resources.

`TrialConfig` is what a worker receives. It is frozen, round-trips through JSON
(`to_dict`/`from_dict`), and has a stable content hash, `trial_id`, over what determines
the result (model, data, train, seed) but not over where it runs (resources) or its name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from models.config import ModelConfig, _known_fields

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagenet", "synthetic")
SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class DataConfig:
    """Which images a trial trains and evaluates on.

    dataset:    one of DATASETS.
    root:       where to look; None means the defaults (fashion-mnist: $RESWEEP_DATA,
                /usr/share/datasets/fashion-mnist, ./data; others: $RESWEEP_DATA, ./data).
    train_size: use the first N images of the training split (after the validation split
                is held out); None = all.
    val_size:   images held out of the training set for validation (paper: 5000 of 50k).
    test_size:  use the first N test images; None = all.
    augment:    pad-4-and-crop + horizontal flip on the training batches (on the device).
    download:   let torchvision download where a network exists.
    """

    dataset: str = "fashion-mnist"
    root: str | None = None
    train_size: int | None = None
    val_size: int = 5000
    test_size: int | None = None
    augment: bool = True
    download: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataConfig":
        return cls(**_known_fields(cls, data, "data"))


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
    eval_every: evaluate test error every k epochs (and always after the last one).
    """

    recipe: str = "cosine"
    epochs: int | None = 10
    iterations: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_lr: float | None = None
    warmup_until_error: float | None = None
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    precision: str = "fp32"
    eval_every: int = 1
    device: str = "auto"
    threads: int | None = None
    cuda_graph: bool = True
    compile: bool = False
    probes: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.milestones, tuple):
            object.__setattr__(self, "milestones", tuple(self.milestones))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return cls(**_known_fields(cls, data, "train"))


@dataclass(frozen=True)
class Resources:
    """What one trial asks of a Ray worker: CPUs and a GPU fraction (0.25 = 4 per GPU)."""

    cpu: float = 1.0
    gpu: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Resources":
        return cls(**_known_fields(cls, data, "resources"))


# Fields that change where or how fast a trial runs but not what it computes; they are
# left out of `trial_id` so the same trial on another machine is recognised as done.
_NOT_HASHED_TRAIN = ("device", "threads", "eval_every")


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

    @property
    def trial_id(self) -> str:
        """12 hex digits of SHA-256 over the canonical JSON of model, data, train, seed."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in _NOT_HASHED_TRAIN}
        content = {"model": self.model.to_dict(), "data": self.data.to_dict(),
                   "train": train, "seed": self.seed}
        blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "study": self.study, "seed": self.seed,
                "trial_id": self.trial_id, "model": self.model.to_dict(),
                "data": self.data.to_dict(), "train": self.train.to_dict(),
                "resources": self.resources.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialConfig":
        data = {k: v for k, v in data.items() if k != "trial_id"}  # derived, not stored
        data = _known_fields(cls, data, "trial")
        return cls(name=data["name"], study=data.get("study", "adhoc"),
                   seed=int(data.get("seed", 0)),
                   model=ModelConfig.from_dict(data["model"]),
                   data=DataConfig.from_dict(data.get("data", {})),
                   train=TrainConfig.from_dict(data.get("train", {})),
                   resources=Resources.from_dict(data.get("resources", {})))

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)
