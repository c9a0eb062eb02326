"""The study file's typed schema: pydantic `*Spec` models, unknown keys forbidden; its
JSON Schema, shipped as `search_spaces/study.schema.json` (`resweep schema`).

A study file is one `StudySpec`. Values are strict (YAML already gives native types, so a
quoted "20" where a number belongs is a mistake worth reporting).

The sections that set config fields (`model`, `data`, `train`, `resources`) are derived
from the resolved dataclasses (`ModelConfig`, `DataConfig`, `TrainConfig`, `Resources`),
where each field is declared once with its rule and description (models/config.py
`setting`): a field added there is settable from a study file, with the same bounds.

Cross-field rules (designs, parameter keys, constraints, distributions, architectures)
are checked in `search_spaces.validate`, which reports them together with these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PlainValidator, Tag,
                      WithJsonSchema, create_model, field_validator)
from typing_extensions import Annotated

from models.config import ModelConfig, Setting, settings
from workers.config import DataConfig, Resources, TrainConfig
from workers.results import OBJECTIVE_METRICS as METRICS  # what a search may optimise
from workers.results import ERROR_METRICS, TRAIN_ERROR, VAL_ERROR
ALGORITHMS = ("optuna-tpe", "optuna-random")
DESIGNS = ("grid", "ablation", "search", "onset")
# Caps of the study-level numbers (the config fields' caps are on their declarations);
# search_spaces/README.md, "Caps", gives the reasons.
MAX_SEEDS = 1000        # seeds per cell (repeats, or the length of seeds)
MAX_SEED = 2**32 - 1    # numpy's and Optuna's samplers take seeds below 2**32

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
    # allow_inf_nan=False: nan and infinities are refused for every float, whatever its
    # bounds (gt=0 alone lets inf through).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# ---- the config sections, derived from the dataclasses --------------------------------

def _bounds(s: Setting) -> dict[str, Any]:
    """pydantic bounds of a field (its items for a tuple). An integer > n is written
    >= n+1, so the JSON Schema says `minimum: 1` for a positive integer."""
    r = s.rule
    bounds = {"ge": r.ge, "gt": r.gt, "le": r.le, "lt": r.lt}
    if (s.item if s.kind is tuple else s.kind) is int:
        if r.gt is not None:
            bounds["ge"], bounds["gt"] = r.gt + 1, None
        if r.lt is not None:
            bounds["le"], bounds["lt"] = r.lt - 1, None
    return {k: v for k, v in bounds.items() if v is not None}


def spec_model(config: type, *, optional: bool = True,
               keep: tuple[str, ...] = ()) -> type[BaseModel]:
    """A `_Spec` with one field per declared field of `config` (a dataclass of
    `setting`s): the same type (a tuple becomes a list), choices, bounds and description.
    optional: every field Optional[...] = None (a study file sets what it changes), but
    the fields named in `keep`; those, and all fields when not optional, keep the
    config's default."""
    fields: dict[str, Any] = {}
    for s in settings(config):
        is_optional = optional and s.name not in keep
        if s.rule.choices is not None:
            kind: Any = Literal[s.rule.choices]
        elif s.kind is tuple:
            kind = list[Annotated[s.item, Field(**_bounds(s))]]
        else:
            kind = s.kind
        bounds = {} if s.kind is tuple else _bounds(s)
        if is_optional or s.nullable:
            kind = Optional[kind]
        default = None if is_optional else s.default
        fields[s.name] = (kind, Field(default, description=s.rule.doc, **bounds))
    return create_model(f"{config.__name__}Fields", __base__=_Spec, **fields)


class ModelSpec(spec_model(ModelConfig)):
    """Fixed `ModelConfig` values shared by every trial (see models.config.ModelConfig).
    Anything left out takes the ModelConfig default, except in_channels, num_classes and
    image_size, which follow the data set (Fashion-MNIST: 1, 10, 28)."""


class DataSpec(spec_model(DataConfig)):
    """`DataConfig` values (see workers.config.DataConfig)."""


class TrainSpec(spec_model(TrainConfig, keep=("recipe",))):
    """A named recipe (workers.recipes.RECIPES) plus overrides of its `TrainConfig` fields.
    Setting `epochs` clears the recipe's `iterations` and the other way round."""


class ResourcesSpec(spec_model(Resources, optional=False)):
    """What one trial asks of a Ray worker. gpu 0.25 packs four trials on one GPU."""

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

    max_t: Optional[int] = Field(None, ge=1, le=10_000, description="default: the trial's epochs")
    grace_period: int = Field(1, ge=1, le=10_000)
    reduction_factor: float = Field(3.0, gt=1, le=100)


class MedianSpec(_Spec):
    """Median stopping rule (Ray Tune's MedianStoppingRule); times in epochs."""

    grace_period: int = Field(1, ge=1, le=10_000)
    min_samples_required: int = Field(3, ge=1, le=10_000)


class SchedulerSpec(_Spec):
    """Exactly one early-stopping scheduler."""

    asha: Optional[AshaSpec] = None
    median: Optional[MedianSpec] = None


class SearchSpec(_Spec):
    """How a `design: search` study explores `space` (Optuna via Ray Tune)."""

    algorithm: Literal[ALGORITHMS] = "optuna-tpe"
    num_samples: int = Field(20, ge=1, le=10_000, description="trials to propose")
    metric: Literal[METRICS] = VAL_ERROR
    mode: Literal["min", "max"] = "min"
    max_concurrent: Optional[int] = Field(None, ge=1, le=1024, description="trials at a time")
    scheduler: Optional[SchedulerSpec] = None
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the sampler's seed")


class OnsetDepths(_Spec):
    """The depth range searched, both ends valid depths of the block (6n+2 / 9n+2)."""

    low: int = Field(ge=1, le=1202)
    high: int = Field(ge=1, le=1202)


class OnsetSeeds(_Spec):
    """Seeds per depth: `start` at each new depth, one more where a test is undecided."""

    start: int = Field(2, ge=2, le=MAX_SEEDS, description="Welch's test needs 2")
    max: int = Field(5, ge=2, le=MAX_SEEDS)


class OnsetBudget(_Spec):
    """The most the design may spend, residual twins included: trials, and/or estimated
    hours of the resource its trials hold (the plan's cost model: a trial's estimated
    wall seconds x resources.gpu, or x resources.cpu on a CPU study, / 3600). At least
    one; with both, the design stops at whichever the next step would exceed."""

    trials: Optional[int] = Field(None, ge=1, le=10_000)
    gpu_hours: Optional[float] = Field(None, gt=0, le=1_000_000, description="GPU-hours "
                                       "(resources.gpu > 0): estimated seconds x "
                                       "resources.gpu / 3600, summed over the trials")
    cpu_hours: Optional[float] = Field(None, gt=0, le=1_000_000, description="CPU "
                                       "core-hours (resources.gpu 0): estimated seconds x "
                                       "resources.cpu / 3600, summed over the trials")


class OnsetSpec(_Spec):
    """How a `design: onset` study looks for the depth where plain nets degrade
    (search_spaces.onset)."""

    depth: OnsetDepths
    metric: Literal[ERROR_METRICS] = Field(TRAIN_ERROR, description="the paper defines "
                                           "degradation on training error")
    # 1 percentage point: the scale of "no real difference" the report's findings use.
    margin: float = Field(0.01, gt=0, lt=1, description="a difference that matters "
                          "(fraction)")
    alpha: float = Field(0.05, gt=0, lt=0.5)
    seeds: OnsetSeeds = OnsetSeeds()
    coarse: int = Field(4, ge=2, le=64, description="depths of the first batch, ends "
                        "included")
    resolution: int = Field(1, ge=1, le=1000, description="stop when the bracketing "
                            "depths are at most this many valid depths apart (1: adjacent)")
    budget: OnsetBudget
    residual_check: bool = Field(True, description="also run the residual twins at the "
                                 "bracketing depths")


class StudySpec(_Spec):
    """One study file. See search_spaces/README.md for examples of each design."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100,
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
    repeats: int = Field(1, ge=1, le=MAX_SEEDS, description="seeds per cell: 0..repeats-1")
    seeds: Optional[Annotated[list[Annotated[int, Field(ge=0, le=MAX_SEED)]],
                             Field(min_length=1, max_length=MAX_SEEDS)]] = Field(
        None, description="explicit seeds instead of repeats")
    search: Optional[SearchSpec] = None
    onset: Optional[OnsetSpec] = None
    resources: ResourcesSpec = ResourcesSpec()
    max_trials: int = Field(500, ge=1, le=10_000, description="refuse studies with more trials")


# The sections whose fields a study may vary (parameter keys, search_spaces.validate).
SECTION_SPECS = {"model": ModelSpec, "data": DataSpec, "train": TrainSpec}


# ---- the JSON Schema ------------------------------------------------------------------

SHIPPED = Path(__file__).with_name("study.schema.json")


def study_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a study file, from `StudySpec`."""
    schema = StudySpec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "resweep study", **{k: v for k, v in schema.items() if k != "title"}}


def schema_text() -> str:
    """`study_schema()` as written to study.schema.json (2-space indent, final newline)."""
    return json.dumps(study_schema(), indent=2, sort_keys=False) + "\n"
