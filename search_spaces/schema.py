"""The study file's typed schema: pydantic `*Spec` models, unknown keys forbidden.

A study file is one `StudySpec`. Values are strict (YAML already gives native types, so a
quoted "20" where a number belongs is a mistake worth reporting). The same models produce
the JSON Schema shipped as `search_spaces/study.schema.json` (`resweep schema`).

Cross-field rules (designs, parameter keys, constraints, distributions, architectures)
are checked in `search_spaces.validate`, which reports them together with these.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PlainValidator, Tag,
                      WithJsonSchema, field_validator)
from typing_extensions import Annotated

from models.config import BLOCKS, FAMILIES, SHORTCUTS
from workers.config import DATASETS, PRECISIONS, SCHEDULES

# Metrics a trial reports per epoch that a search may optimise (see workers.train_trial).
METRICS = ("val_error", "val_loss", "train_error", "train_loss", "test_error", "test_loss")
ALGORITHMS = ("optuna-tpe", "optuna-random")
DESIGNS = ("grid", "ablation", "search")

_SCALAR_TYPES = (bool, int, float, str, type(None))


def _plain_value(value: Any) -> Any:
    """A scalar, or a flat list of scalars (a list-valued field such as `stages`, or the
    any-of list of a constraint); what each key accepts is checked per key later."""
    if isinstance(value, _SCALAR_TYPES):
        return value
    if isinstance(value, list) and all(isinstance(v, _SCALAR_TYPES) for v in value):
        return value
    raise ValueError("should be a plain value (true/false, a number, text or null) or a "
                     "flat list of them")


_SCALAR_SCHEMA = {"type": ["boolean", "integer", "number", "string", "null"]}
# One value a parameter can take in a space, baseline, vary list or constraint. One
# validator rather than a Union, so a wrong value gives one error, not one per type.
ParamValue = Annotated[Any, PlainValidator(_plain_value), WithJsonSchema(
    {"anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA}]})]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSpec(_Spec):
    """Fixed `ModelConfig` values shared by every trial (see models.config.ModelConfig).
    Anything left out takes the ModelConfig default, except in_channels, num_classes and
    image_size, which follow the data set (Fashion-MNIST: 1, 10, 28)."""

    family: Optional[Literal[FAMILIES]] = Field(None, description="cifar | imagenet | mlp")
    depth: Optional[int] = Field(None, ge=1, description="weighted layers (6n+2 basic, 9n+2 "
                                 "bottleneck cifar; 18/34/50/101/152 imagenet; mlp: blocks)")
    block: Optional[Literal[BLOCKS]] = None
    residual: Optional[bool] = Field(None, description="false: the plain twin, no shortcuts")
    shortcut: Optional[Literal[SHORTCUTS]] = Field(
        None, description="A zero-padded identity, B projection where the shape changes, "
                          "C projection everywhere; ignored by plain nets")
    width: Optional[float] = Field(None, gt=0, description="channel multiplier")
    in_channels: Optional[int] = Field(None, ge=1)
    num_classes: Optional[int] = Field(None, ge=2)
    image_size: Optional[int] = Field(None, ge=1)
    stages: Optional[list[Annotated[int, Field(ge=1)]]] = Field(
        None, description="imagenet only: blocks per stage, overrides depth")
    hidden: Optional[int] = Field(None, ge=1, description="mlp only: units per layer")


class DataSpec(_Spec):
    """`DataConfig` values (see workers.config.DataConfig)."""

    dataset: Optional[Literal[DATASETS]] = None
    root: Optional[str] = None
    train_size: Optional[int] = Field(None, ge=1, description="first N training images")
    val_size: Optional[int] = Field(None, ge=0, description="held out of the training set")
    test_size: Optional[int] = Field(None, ge=1, description="first N test images")
    augment: Optional[bool] = None
    download: Optional[bool] = None


class TrainSpec(_Spec):
    """A named recipe (workers.recipes.RECIPES) plus overrides of its `TrainConfig` fields.
    Setting `epochs` clears the recipe's `iterations` and the other way round."""

    recipe: str = Field("cosine", description="a name in workers.recipes.RECIPES")
    epochs: Optional[int] = Field(None, ge=1)
    iterations: Optional[int] = Field(None, ge=1, description="optimizer steps")
    batch_size: Optional[int] = Field(None, ge=1)
    lr: Optional[float] = Field(None, gt=0)
    momentum: Optional[float] = Field(None, ge=0, lt=1)
    nesterov: Optional[bool] = None
    weight_decay: Optional[float] = Field(None, ge=0)
    schedule: Optional[Literal[SCHEDULES]] = None
    milestones: Optional[list[Annotated[int, Field(ge=1)]]] = Field(
        None, description="iterations at which a step schedule multiplies lr by gamma")
    gamma: Optional[float] = Field(None, gt=0)
    warmup_iters: Optional[int] = Field(None, ge=0)
    warmup_lr: Optional[float] = Field(None, gt=0)
    warmup_until_error: Optional[float] = Field(None, ge=0, le=1)
    label_smoothing: Optional[float] = Field(None, ge=0, lt=1)
    grad_clip: Optional[float] = Field(None, gt=0)
    precision: Optional[Literal[PRECISIONS]] = None
    eval_every: Optional[int] = Field(None, ge=1, description="test error every k epochs")
    device: Optional[str] = Field(None, description="auto | cpu | cuda | cuda:N")
    threads: Optional[int] = Field(None, ge=1, description="torch threads per trial")
    cuda_graph: Optional[bool] = None
    compile: Optional[bool] = None
    probes: Optional[bool] = None


class ResourcesSpec(_Spec):
    """What one trial asks of a Ray worker. gpu 0.25 packs four trials on one GPU."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="a fraction below 1, or whole GPUs")

    @field_validator("gpu")
    @classmethod
    def _fraction_or_whole(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("a GPU share must be a fraction up to 1 or a whole number")
        return gpu


# ---- search distributions -------------------------------------------------------------

class IntRange(_Spec):
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False


class FloatRange(_Spec):
    low: float
    high: float
    log: bool = False
    step: Optional[float] = Field(None, gt=0)


class ChoiceDistribution(_Spec):
    """`{choice: [20, 56, 110]}`: one of the listed values."""

    choice: list[ParamValue] = Field(min_length=1)


class IntDistribution(_Spec):
    """`{int: {low: 1, high: 8, step: 1, log: false}}`: integers low..high inclusive."""

    int: IntRange


class FloatDistribution(_Spec):
    """`{float: {low: 0.01, high: 0.3, log: true}}`: reals in [low, high]."""

    float: FloatRange


def _space_kind(value: Any) -> str:
    """Which shape a space entry has, so errors come from that shape only."""
    if isinstance(value, dict):
        for kind in ("choice", "int", "float"):
            if kind in value:
                return f"{kind} distribution"
        return "values"  # a mapping without a known kind: report as "should be a list"
    return "values"


SpaceEntry = Annotated[
    Union[Annotated[list[ParamValue], Field(min_length=1), Tag("values")],
          Annotated[ChoiceDistribution, Tag("choice distribution")],
          Annotated[IntDistribution, Tag("int distribution")],
          Annotated[FloatDistribution, Tag("float distribution")]],
    Discriminator(_space_kind)]
# Tags appear in pydantic's error locations; they are dropped when errors are reported.
SPACE_TAGS = ("values", "choice distribution", "int distribution", "float distribution")


# ---- constraints, search settings, the study ------------------------------------------

Condition = dict[str, ParamValue]


class ConstraintSpec(_Spec):
    """A rule over the cells of a grid (or ablation, or search proposals).

    `when` matches a cell when every listed key has the given value (a list: any of
    them). Then `skip: true` drops the cell, or `require: {...}` keeps it only if every
    listed key has the given value (a list: any of them)."""

    when: Condition = Field(min_length=1)
    skip: Optional[bool] = None
    require: Optional[Annotated[Condition, Field(min_length=1)]] = None


class AshaSpec(_Spec):
    """Asynchronous successive halving (Ray Tune's ASHAScheduler); times in epochs."""

    max_t: Optional[int] = Field(None, ge=1, description="default: the trial's epochs")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class MedianSpec(_Spec):
    """Median stopping rule (Ray Tune's MedianStoppingRule); times in epochs."""

    grace_period: int = Field(1, ge=1)
    min_samples_required: int = Field(3, ge=1)


class SchedulerSpec(_Spec):
    """Exactly one early-stopping scheduler."""

    asha: Optional[AshaSpec] = None
    median: Optional[MedianSpec] = None


class SearchSpec(_Spec):
    """How a `design: search` study explores `space` (Optuna via Ray Tune)."""

    algorithm: Literal[ALGORITHMS] = "optuna-tpe"
    num_samples: int = Field(20, ge=1, description="trials to propose")
    metric: Literal[METRICS] = "val_error"
    mode: Literal["min", "max"] = "min"
    max_concurrent: Optional[int] = Field(None, ge=1, description="trials at a time")
    scheduler: Optional[SchedulerSpec] = None
    seed: int = Field(0, description="the sampler's seed")


class StudySpec(_Spec):
    """One study file. See search_spaces/README.md for examples of each design."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="MLflow experiment name")
    description: str = ""
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    model: ModelSpec = ModelSpec()
    design: Literal[DESIGNS] = "grid"
    space: Optional[dict[str, SpaceEntry]] = Field(
        None, description="grid: key -> list of values; search: key -> distribution. "
                          "Keys: model fields (depth, residual, ...) or train.<field> / "
                          "data.<field>")
    baseline: Optional[dict[str, ParamValue]] = Field(
        None, description="ablation: the reference cell")
    vary: Optional[dict[str, Annotated[list[ParamValue], Field(min_length=1)]]] = Field(
        None, description="ablation: values tried one factor at a time")
    constraints: list[ConstraintSpec] = []
    repeats: int = Field(1, ge=1, description="seeds per cell: 0..repeats-1")
    seeds: Optional[Annotated[list[int], Field(min_length=1)]] = Field(
        None, description="explicit seeds instead of repeats")
    search: Optional[SearchSpec] = None
    resources: ResourcesSpec = ResourcesSpec()
    max_trials: int = Field(500, ge=1, description="refuse studies with more trials")


# Every section's spec must cover its resolved dataclass (a test checks it).
SECTION_SPECS = {"model": ModelSpec, "data": DataSpec, "train": TrainSpec}
