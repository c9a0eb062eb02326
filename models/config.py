"""`ModelConfig`: the resolved, plain-data description of one network; `ConfigError`.

Frozen so a config can be hashed and shared between processes; `to_dict`/`from_dict`
round-trip through JSON (that is how a trial travels to a Ray worker and into MLflow).

This module imports nothing but the standard library, so every layer (workers,
search_spaces, analysis, the CLI, also `resweep --help`) imports `ConfigError` from here
without paying for torch or the builders.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration value is not allowed. The message names the field, the value
    received and what is allowed, e.g.
    ``model.depth: got 21; a basic cifar net needs depth = 6n+2 (20, 26, 32, ...)``.
    The CLI turns it into exit status 2 with no traceback."""


FAMILIES = ("cifar", "imagenet", "mlp")
BLOCKS = ("basic", "bottleneck")
SHORTCUTS = ("A", "B", "C")


@dataclass(frozen=True)
class ModelConfig:
    """One network of the ResNet family.

    family:      "cifar" (paper Sec. 4.2), "imagenet" (paper Table 1) or "mlp" (the toy).
    depth:       weighted layers: 6n+2 (cifar basic), 9n+2 (cifar bottleneck),
                 18/34/50/101/152 (imagenet); for "mlp" the number of two-layer blocks.
    block:       "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1).
    residual:    False gives the plain twin (same layers, no shortcut at all).
    shortcut:    "A" zero-padded identity, "B" projection where the shape changes,
                 "C" projection on every block. Ignored (normalised to "A") when plain.
    width:       channel multiplier: cifar stages have 16/32/64 x width channels,
                 imagenet 64/128/256/512 x width.
    in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR/ImageNet).
    num_classes: classifier outputs.
    image_size:  input height = width in pixels (MACs, and the mlp's input features).
    stages:      imagenet only: explicit blocks per stage, overrides `depth`.
    hidden:      mlp only: units per hidden layer.
    """

    family: str = "cifar"
    depth: int = 20
    block: str = "basic"
    residual: bool = True
    shortcut: str = "A"
    width: float = 1.0
    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    stages: tuple[int, ...] | None = None
    hidden: int = 64

    def __post_init__(self) -> None:
        if self.stages is not None and not isinstance(self.stages, tuple):
            object.__setattr__(self, "stages", tuple(self.stages))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["stages"] is not None:
            d["stages"] = list(d["stages"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls(**_known_fields(cls, data, "model"))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _known_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Reject keys the dataclass does not have, naming them and the allowed ones."""
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {allowed}")
    return dict(data)
