"""`ModelConfig`, `ConfigError`, `setting`, `validate_model_config`: fields and rules.

A config field is declared once, on its frozen dataclass, with `setting(default, doc=...,
choices=..., ge=..., gt=..., le=..., lt=...)`; its type and whether it may be null come
from the annotation (`int | None`). From that one declaration `field_problems` checks a
resolved config, and search_spaces derives the study file's all-optional `*Spec` models
and the JSON Schema. Only rules between fields stay as code, next to their config:
`validate_model_config` here, `train_config_problems` in workers/config.py.

Frozen so a config can be hashed and shared between processes; `to_dict`/`from_dict`
round-trip through JSON (that is how a trial travels to a Ray worker and into MLflow).

This module imports nothing but the standard library (and models.architectures, itself
stdlib-only), so every layer (workers, search_spaces, analysis, the CLI, also
`resweep --help`) imports it without paying for torch or the builders.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

from models.architectures import (BLOCK_SHAPES, IMAGENET_LAYOUTS, STAGE_CHANNELS,
                                  cifar_depth_step)


class ConfigError(ValueError):
    """A configuration value is not allowed. The message names the field, the value
    received and what is allowed, e.g.
    ``model.depth: got 21; a basic cifar net needs depth = 6n+2 (20, 26, 32, ...)``.
    The CLI turns it into exit status 2 with no traceback."""


# ---- one declaration per field --------------------------------------------------------

_META_KEY = "resweep.setting"


@dataclass(frozen=True)
class Rule:
    """What a field allows besides its type: choices and bounds (for a tuple field the
    bounds apply to each item); `doc` is its one-line description."""

    doc: str
    choices: tuple | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None


def setting(default: Any, *, doc: str, choices=None, ge=None, gt=None, le=None,
            lt=None) -> Any:
    """A dataclass field with its default, rule and description (see the module doc)."""
    rule = Rule(doc, tuple(choices) if choices is not None else None, ge, gt, le, lt)
    return dataclasses.field(default=default, metadata={_META_KEY: rule})


@dataclass(frozen=True)
class Setting:
    """One declared field, resolved: `kind` is bool, int, float, str or tuple (then
    `item` is the items' type); `nullable` when the annotation allows None."""

    name: str
    kind: type
    item: type | None
    nullable: bool
    default: Any
    rule: Rule

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind is tuple:
            return isinstance(value, (tuple, list)) and all(
                _is_a(self.item, v) and self._in_bounds(v) for v in value)
        if not _is_a(self.kind, value):
            return False
        if self.rule.choices is not None and value not in self.rule.choices:
            return False
        return self.kind is bool or self.kind is str or self._in_bounds(value)

    def _in_bounds(self, value: Any) -> bool:
        r = self.rule
        return ((r.ge is None or value >= r.ge) and (r.gt is None or value > r.gt)
                and (r.le is None or value <= r.le) and (r.lt is None or value < r.lt))

    def allowed(self) -> str:
        """What the field allows, for messages: "a positive integer", "['fp32', 'bf16']"."""
        if self.rule.choices is not None:
            text = str(list(self.rule.choices))
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = "text"
        elif self.kind is tuple:
            text = f"a list of {_number_text(self.item, self.rule, plural=True)}"
        else:
            text = _number_text(self.kind, self.rule, plural=False)
        return f"null or {text}" if self.nullable else text


def _is_a(kind: type, value: Any) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _number_text(kind: type, rule: Rule, plural: bool) -> str:
    """"a positive integer", "a number >= 0 and < 1", "integers >= 1"."""
    noun = "integer" if kind is int else "number"

    def shown(value: float) -> str:  # 100000000, not 1e+08
        return str(int(value)) if float(value).is_integer() else f"{value:g}"

    if kind is int and rule.gt == 0 and (rule.ge, rule.lt) == (None, None):
        cap = f" <= {shown(rule.le)}" if rule.le is not None else ""
        return f"positive {noun}s{cap}" if plural else f"a positive {noun}{cap}"
    bounds = [f"{op} {shown(value)}" for op, value in
              ((">=", rule.ge), (">", rule.gt), ("<=", rule.le), ("<", rule.lt))
              if value is not None]
    head = f"{noun}s" if plural else ("an " if noun == "integer" else "a ") + noun
    return " ".join([head, " and ".join(bounds)]) if bounds else head


@lru_cache(maxsize=None)
def settings(cls: type) -> tuple[Setting, ...]:
    """The declared fields of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if _META_KEY not in f.metadata:
            continue
        kind, nullable = hints[f.name], False
        if typing.get_origin(kind) in (Union, types.UnionType):
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            kind, nullable = args[0], True
        item = None
        if typing.get_origin(kind) is tuple:  # tuple[int, ...]
            kind, item = tuple, typing.get_args(kind)[0]
        out.append(Setting(f.name, kind, item, nullable, f.default, f.metadata[_META_KEY]))
    return tuple(out)


def field_problems(config: Any, where: str) -> list[str]:
    """One message per field of `config` that breaks its own rule, in declaration order:
    ``train.lr: got -1; allowed: a number > 0``. Rules between fields are not checked."""
    problems = []
    for s in settings(type(config)):
        value = getattr(config, s.name)
        if not s.accepts(value):
            shown = list(value) if isinstance(value, tuple) else value
            problems.append(f"{where}.{s.name}: got {shown!r}; allowed: {s.allowed()}")
    return problems


def invalid_fields(config: Any) -> set[str]:
    """Names of the fields `field_problems` reports (rules between fields skip them)."""
    return {s.name for s in settings(type(config)) if not s.accepts(getattr(config, s.name))}


# ---- the network ----------------------------------------------------------------------

FAMILIES = ("cifar", "imagenet", "mlp")
BLOCKS = tuple(BLOCK_SHAPES)  # ("basic", "bottleneck")
SHORTCUTS = ("A", "B", "C")  # models/blocks.py registers exactly these (a test checks)


@dataclass(frozen=True)
class ModelConfig:
    """One network of the ResNet family. A plain net (residual false) ignores `shortcut`
    (expansion normalises it to "A").

    The upper bounds (`le=`) are caps that refuse hostile or mistyped values before
    anything is built; search_spaces/README.md, "Caps", gives each one's reason."""

    family: str = setting("cifar", choices=FAMILIES,
                          doc="cifar (paper Sec. 4.2), imagenet (paper Table 1) or mlp "
                              "(the toy)")
    depth: int = setting(20, ge=1, le=1202,
                         doc="weighted layers (6n+2 basic, 9n+2 bottleneck cifar; "
                             "18/34/50/101/152 imagenet; mlp: blocks)")
    block: str = setting("basic", choices=BLOCKS,
                         doc="basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1)")
    residual: bool = setting(True, doc="false: the plain twin, no shortcuts")
    shortcut: str = setting("A", choices=SHORTCUTS,
                            doc="A zero-padded identity, B projection where the shape "
                                "changes, C projection everywhere; ignored by plain nets")
    width: float = setting(1.0, gt=0, le=64,
                           doc="channel multiplier (cifar stages 16/32/64 x width, imagenet "
                               "64/128/256/512 x width)")
    in_channels: int = setting(3, ge=1, le=1024,
                               doc="image channels (1 Fashion-MNIST, 3 CIFAR)")
    num_classes: int = setting(10, ge=2, le=100_000, doc="classifier outputs")
    image_size: int = setting(32, ge=1, le=4096,
                              doc="input height = width in pixels (for MACs, and the mlp's "
                                  "input features)")
    stages: tuple[int, ...] | None = setting(
        None, ge=1, le=200, doc="imagenet only: blocks per stage, overrides depth")
    hidden: int = setting(64, ge=1, le=65_536, doc="mlp only: units per layer")

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
        return cls(**known_fields(cls, data, "model"))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def known_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Reject keys the dataclass does not have, naming them and the allowed ones."""
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {allowed}")
    return dict(data)


# ---- the architecture rules -----------------------------------------------------------

# Every message names the field (``model.depth``), the value received and what is allowed.
# Each field's own rule (type, choices, bounds) is declared on `ModelConfig` above; these
# are the architecture rules, read from the table in models/architectures.py that the
# builders use too. Study expansion calls this (through models.complexity.model_stats) for
# every distinct network, and build_model before it builds one.

def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ConfigError for the first invalid field of `cfg`; return None if valid."""
    problems = field_problems(cfg, "model")
    if problems:
        raise ConfigError(problems[0])
    if cfg.family in STAGE_CHANNELS:
        base = STAGE_CHANNELS[cfg.family][0]  # narrowest stage before the multiplier
        narrowest = int(round(base * cfg.width))
        if narrowest < 1:
            raise ConfigError(
                f"model.width: got {cfg.width!r}; the narrowest {cfg.family} stage would "
                f"have {narrowest} channels; allowed: width >= {0.5 / base:g}")
    if cfg.family != "imagenet" and cfg.stages is not None:
        raise ConfigError(f"model.stages: got {list(cfg.stages)}; only the imagenet family "
                          "takes explicit stages (leave it null)")
    {"cifar": _check_cifar, "imagenet": _check_imagenet, "mlp": lambda c: None}[
        cfg.family](cfg)


def _check_cifar(cfg: ModelConfig) -> None:
    step = cifar_depth_step(cfg.block)  # 6 (basic) or 9 (bottleneck)
    if cfg.depth < step + 2 or (cfg.depth - 2) % step:
        examples = ", ".join(str(step * n + 2) for n in range(1, 5))
        raise ConfigError(
            f"model.depth: got {cfg.depth}; a {cfg.block} cifar net needs depth = "
            f"{step}n+2 with n >= 1 ({examples}, ...)")


def _check_imagenet(cfg: ModelConfig) -> None:
    num_stages = len(STAGE_CHANNELS["imagenet"])
    if cfg.stages is not None:
        if len(cfg.stages) != num_stages:
            raise ConfigError(f"model.stages: got {list(cfg.stages)}; allowed: four "
                              "integers >= 1 (blocks per stage, e.g. [3, 4, 6, 3])")
        return
    if cfg.depth not in IMAGENET_LAYOUTS:
        raise ConfigError(
            f"model.depth: got {cfg.depth}; an imagenet net needs depth in "
            f"{sorted(IMAGENET_LAYOUTS)} (or explicit model.stages)")
    needed = IMAGENET_LAYOUTS[cfg.depth][0]
    if cfg.block != needed:
        raise ConfigError(
            f"model.block: got {cfg.block!r}; imagenet depth {cfg.depth} uses {needed!r} "
            "blocks (18/34: basic, 50/101/152: bottleneck); give model.stages for "
            "another layout")
