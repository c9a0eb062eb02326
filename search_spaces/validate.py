"""Checks of a study file beyond its types; parameter keys; pydantic errors as `Problem`s.

Parameter keys are the names a study varies (`space`, `baseline`, `vary`, constraints): a
model field (`depth`, `residual`, `block`, `shortcut`, `width`, ...; also written
`model.depth`) or a dotted path into another section (`train.lr`, `data.train_size`).
`parse_key` reads one; `check_value` checks a value against the same field of the schema.

`schema_problems` translates pydantic's errors into one line each with the file line.
`semantic_problems` checks what types cannot: which sections a design needs, parameter
keys and their values, constraints, distributions, seeds, the recipe name. Each check
runs only when the sections it reads are themselves valid, so one mistake is reported
once, not echoed by every check that reads it.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from typing_extensions import Annotated

from search_spaces.loading import Locations, Problem, format_path, short_repr
from search_spaces.schema import (SECTION_SPECS, SPACE_TAGS, ChoiceDistribution,
                                  FloatDistribution, IntDistribution, StudySpec)

_TAG_MODELS = {"choice distribution": ChoiceDistribution,
               "int distribution": IntDistribution, "float distribution": FloatDistribution}


# ---- parameter keys -------------------------------------------------------------------

@dataclass(frozen=True)
class ParamKey:
    """One varied field: `section` is model, data or train; `text` as the user wrote it."""

    section: str
    field: str
    text: str

    @property
    def dotted(self) -> str:
        """Canonical form: "model.depth", "train.lr"."""
        return f"{self.section}.{self.field}"

    @property
    def short(self) -> str:
        """For names and tables: "depth", "lr", "train_size"."""
        return self.field


def allowed_keys_text() -> str:
    model = ", ".join(SECTION_SPECS["model"].model_fields)
    return f"a model field ({model}) or train.<field> / data.<field>"


def parse_key(text: object) -> ParamKey:
    """"depth" -> ParamKey("model", "depth"); raises ValueError with what is allowed."""
    if not isinstance(text, str):
        raise ValueError(f"got the key {text!r}; {allowed_keys_text()}")
    section, _, field = text.rpartition(".")
    spec = SECTION_SPECS.get(section or "model")
    if spec is None or not section and field not in spec.model_fields:
        raise ValueError(f"got the key {text!r}; {allowed_keys_text()}")
    section = section or "model"
    if field not in spec.model_fields:
        raise ValueError(f"got the key {text!r}; {section} has: "
                         f"{', '.join(spec.model_fields)}")
    return ParamKey(section, field, text)


@lru_cache(maxsize=None)
def _adapter(section: str, field: str) -> TypeAdapter:
    info = SECTION_SPECS[section].model_fields[field]
    return TypeAdapter(Annotated[info.annotation, info],
                       config=ConfigDict(strict=True, allow_inf_nan=False))


def check_value(key: ParamKey, value: object) -> str | None:
    """None when `value` is allowed for `key`, else "got ...; should be ..."."""
    if value is None and key.section == "model":
        return f"got None; {key.text} needs a value"
    try:
        _adapter(key.section, key.field).validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]
        return f"got {short_repr(value)}; {cap_text(first) or _lower_first(first['msg'])}"
    return None


def coerce_value(key: ParamKey, value: object) -> object:
    """The checked value in the field's type (1 -> 1.0 for a float field)."""
    return _adapter(key.section, key.field).validate_python(value)


def _lower_first(msg: str) -> str:
    msg = msg.replace("Input should be", "should be")
    return msg[:1].lower() + msg[1:]


def is_list_field(key: ParamKey) -> bool:
    """Fields whose single value is a list (milestones, stages): a list is not any-of."""
    annotation = SECTION_SPECS[key.section].model_fields[key.field].annotation
    return any(typing.get_origin(a) is list
               for a in (annotation, *typing.get_args(annotation)))


# ---- pydantic errors ------------------------------------------------------------------

def schema_problems(err: ValidationError, locations: Locations) -> list[Problem]:
    """One Problem per pydantic error, located at the key's line."""
    problems = []
    for e in err.errors(include_url=False):
        raw_loc = tuple(e["loc"])
        loc = tuple(p for p in raw_loc if p not in SPACE_TAGS)
        where = locations.where(loc)
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(raw_loc[:-1])
            text = f"got the unknown key {loc[-1]!r}; allowed keys: {', '.join(allowed)}"
        elif e["type"] == "missing":
            text = "is missing; it is required"
        else:
            text = f"got {short_repr(e['input'])}; {_allowed(e)}"
        problems.append(Problem(where, format_path(loc), text))
    return problems


CAPS_NOTE = "a cap, see search_spaces/README.md \"Caps\""


def cap_text(e: dict) -> str | None:
    """"at most 1202 (a cap, ...)" for a pydantic error that broke an upper bound or a
    length cap, "should be a finite number" for nan/inf; None for other errors."""
    ctx = e.get("ctx") or {}
    if e["type"] == "less_than_equal":
        return f"at most {ctx['le']} ({CAPS_NOTE})"
    if e["type"] == "less_than":
        return f"less than {ctx['lt']}"
    if e["type"] == "too_long":
        return f"at most {ctx['max_length']} items ({CAPS_NOTE})"
    if e["type"] == "string_too_long":
        return f"at most {ctx['max_length']} characters ({CAPS_NOTE})"
    if e["type"] == "finite_number":
        return "should be a finite number (not nan or an infinity)"
    return None


def _allowed(e: dict) -> str:
    msg = e["msg"]
    if cap_text(e):
        return cap_text(e)
    if e["type"] == "literal_error":
        return "allowed: " + msg.removeprefix("Input should be ")
    if e["loc"][:1] == ("space",) and len(e["loc"]) >= 2 and (
            e["type"] == "union_tag_invalid" or
            e["type"] == "list_type" and isinstance(e["input"], dict)):
        return "should be a list of values or a distribution {choice: [...]}, " \
               "{int: {low, high}} or {float: {low, high}}"
    if e["type"] == "string_pattern_mismatch":
        return "allowed: letters, digits, '.', '_' and '-', starting with a letter or digit"
    if msg.startswith("Value error, "):
        return msg.removeprefix("Value error, ")
    msg = re.sub(r" or instance of \w+", "", msg.replace("Input should be", "should be"))
    return msg[:1].lower() + msg[1:]


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the spec model at `loc` (for "allowed keys: ...")."""
    tags = [i for i, part in enumerate(loc) if part in _TAG_MODELS]
    model: Any = _TAG_MODELS[loc[tags[-1]]] if tags else StudySpec
    for part in loc[tags[-1] + 1:] if tags else loc:
        if isinstance(part, int):  # a list item: the same model
            continue
        field = model.model_fields.get(part)
        model = _inner_model(field.annotation) if field else None
        if model is None:
            return []
    return list(model.model_fields)


def _inner_model(annotation):
    """The BaseModel inside Optional[...] / list[...] / dict[str, ...] / Annotated[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


# ---- semantic checks ------------------------------------------------------------------

class _Report:
    """Collects problems located through the file's line map."""

    def __init__(self, locations: Locations):
        self.locations = locations
        self.problems: list[Problem] = []

    def add(self, path: tuple, message: str) -> None:
        self.problems.append(Problem(self.locations.where(path), format_path(path), message))


def semantic_problems(spec: StudySpec, bad_sections: set[str], locations: Locations,
                      recipes: dict, partly_bad: frozenset[str] = frozenset()
                      ) -> tuple[list[Problem], dict[str, ParamKey]]:
    """Cross-field checks; returns problems and the parsed parameter keys (text -> key).

    bad_sections: top-level sections dropped whole for schema errors (checks reading
    them are skipped); partly_bad: sections with some schema error (not called empty)."""
    report = _Report(locations)
    keys: dict[str, ParamKey] = {}

    def ok(*sections: str) -> bool:
        return not bad_sections.intersection(sections)

    if ok("design", "space", "baseline", "vary", "search"):
        _check_design_sections(spec, report, partly_bad)
    if ok("space", "baseline", "vary", "constraints"):
        _check_param_keys(spec, report, keys)
    if ok("space", "baseline", "vary", "model", "data", "train"):
        _check_fixed_vs_varied(spec, report, keys)
    if ok("baseline", "vary") and spec.design == "ablation" and spec.baseline is not None \
            and spec.vary is not None:
        for name in spec.vary:
            if name not in spec.baseline:
                report.add(("vary", name), f"got the key {name!r}, which the baseline lacks; "
                           f"every varied key needs a baseline value (baseline has: "
                           f"{', '.join(map(str, spec.baseline)) or 'nothing'})")
    if ok("constraints"):
        for i, rule in enumerate(spec.constraints):
            if rule.skip is None and rule.require is None:
                report.add(("constraints", i), "got a rule with only `when`; add "
                           "`skip: true` or `require: {...}`")
            elif rule.skip is not None and rule.require is not None:
                report.add(("constraints", i), "got both `skip` and `require`; a rule "
                           "has one of them")
            elif rule.skip is False:
                report.add(("constraints", i, "skip"), "got False; `skip: true` (or "
                           "remove the rule)")
    if ok("repeats", "seeds") and spec.seeds is not None:
        if "repeats" in spec.model_fields_set and spec.repeats != len(spec.seeds):
            report.add(("seeds",), f"got {len(spec.seeds)} seeds with repeats "
                       f"{spec.repeats}; give `repeats` or `seeds`, not both")
        if len(set(spec.seeds)) != len(spec.seeds):
            report.add(("seeds",), f"got {spec.seeds}; each seed once")
    if ok("train") and spec.train.recipe not in recipes:
        report.add(("train", "recipe"), f"got {spec.train.recipe!r}; allowed: "
                   f"{', '.join(recipes)}")
    if ok("space", "design") and spec.design == "search" and spec.space:
        _check_distributions(spec, report)
    if ok("search", "train") and spec.search and spec.search.scheduler:
        _check_scheduler(spec, report)
    return report.problems, keys


def _check_design_sections(spec: StudySpec, report: _Report, partly_bad) -> None:
    needs = {"grid": ("space",), "ablation": ("baseline", "vary"),
             "search": ("space", "search"), "onset": ("onset",)}[spec.design]
    allowed = set(needs)
    for section in needs:
        if getattr(spec, section) in (None, {}) and section not in partly_bad:
            what = {"space": "a mapping of keys to " + (
                        "distributions" if spec.design == "search" else "lists of values"),
                    "baseline": "a mapping of keys to values",
                    "vary": "a mapping of keys to lists of values",
                    "search": "search settings (algorithm, num_samples, metric, ...)",
                    "onset": "onset settings (depth, budget, ...)"}[section]
            got = "nothing" if getattr(spec, section) is None else "an empty mapping"
            report.add((section,), f"got {got}; design {spec.design!r} needs {what}")
    for section in ("space", "baseline", "vary", "search", "onset"):
        if section not in allowed and getattr(spec, section) is not None:
            users = {"space": "grid or search", "baseline": "ablation",
                     "vary": "ablation", "search": "search", "onset": "onset"}[section]
            report.add((section,), f"got a {section} section with design {spec.design!r}; "
                       f"`{section}` belongs to design {users}")
    if spec.design == "grid" and spec.space:
        for name, entry in spec.space.items():
            if not isinstance(entry, list):
                report.add(("space", name), f"got {short_repr(entry.model_dump())}; a grid "
                           "needs a list of values (distributions are for design: search)")


def _check_param_keys(spec: StudySpec, report: _Report, keys: dict[str, ParamKey]) -> None:
    """Every key names a field, and every value fits that field."""
    groups: list[tuple[tuple, dict, str]] = []
    if spec.space:
        groups.append((("space",), spec.space, "space"))
    if spec.baseline:
        groups.append((("baseline",), spec.baseline, "value"))
    if spec.vary:
        groups.append((("vary",), spec.vary, "list"))
    for i, rule in enumerate(spec.constraints):
        groups.append((("constraints", i, "when"), rule.when, "condition"))
        if rule.require:
            groups.append((("constraints", i, "require"), rule.require, "condition"))
    seen_dotted: dict[tuple, str] = {}
    for prefix, mapping, kind in groups:
        for text, entry in mapping.items():
            path = prefix + (text,)
            try:
                key = parse_key(text)
            except ValueError as err:
                report.add(path, str(err))
                continue
            keys[text] = key
            if prefix in (("space",), ("baseline",), ("vary",)):
                other = seen_dotted.setdefault((prefix, key.dotted), text)
                if other != text:
                    report.add(path, f"got {text!r} and {other!r}, the same field twice; "
                               "write it once")
            for sub, value in _values_of(entry, kind, key):
                message = check_value(key, value)
                if message:
                    report.add(path + sub, message)


def _values_of(entry, kind: str, key: ParamKey):
    """(sub-path, value) pairs to type-check for one entry of a section."""
    if kind == "value":
        return [((), entry)]
    if kind == "condition":
        if isinstance(entry, list) and not is_list_field(key):
            return [((i,), v) for i, v in enumerate(entry)]
        return [((), entry)]
    if kind == "list":
        return [((i,), v) for i, v in enumerate(entry)]
    # space: a list of values or a distribution
    if isinstance(entry, list):
        return [((i,), v) for i, v in enumerate(entry)]
    if isinstance(entry, ChoiceDistribution):
        return [(("choice", i), v) for i, v in enumerate(entry.choice)]
    bounds = entry.int if isinstance(entry, IntDistribution) else entry.float
    tag = "int" if isinstance(entry, IntDistribution) else "float"
    return [((tag, "low"), bounds.low), ((tag, "high"), bounds.high)]


def _check_fixed_vs_varied(spec: StudySpec, report: _Report,
                           keys: dict[str, ParamKey]) -> None:
    """A field is either fixed (model/data/train) or varied (space/baseline), not both."""
    for section_name in ("space", "baseline"):
        section = getattr(spec, section_name) or {}
        for text in section:
            key = keys.get(text)
            if key is None:
                continue
            fixed = getattr(spec, key.section)
            unset = key.section == "model" and getattr(fixed, key.field) is None
            if key.field in fixed.model_fields_set and key.field != "recipe" and not unset:
                report.add((section_name, text), f"got {text!r} here and in {key.section}."
                           f"{key.field}; a field is either fixed in `{key.section}` or "
                           f"varied in `{section_name}`, remove one")
            elif key.field == "recipe" and "recipe" in fixed.model_fields_set:
                report.add((section_name, text), f"got {text!r}, which train.recipe also "
                           f"fixes; remove one")


def _check_distributions(spec: StudySpec, report: _Report) -> None:
    """Optuna's rules: low <= high, log scale needs low > 0, no step with log."""
    for name, entry in spec.space.items():
        if isinstance(entry, ChoiceDistribution) or isinstance(entry, list):
            continue
        tag = "int" if isinstance(entry, IntDistribution) else "float"
        b = entry.int if tag == "int" else entry.float
        path = ("space", name, tag)
        if not (math.isfinite(b.low) and math.isfinite(b.high)):
            report.add(path, f"got low={b.low}, high={b.high}; finite bounds")
        elif b.low > b.high:
            report.add(path, f"got low={b.low}, high={b.high}; `low <= high` must hold")
        if b.log and b.low <= 0:
            report.add(path + ("low",), f"got {b.low}; a log-scale range needs low > 0")
        if b.log and (tag == "float" and b.step is not None or tag == "int" and b.step != 1):
            report.add(path + ("step",), f"got {b.step} with log: true; a log-scale range "
                       "takes no step (int: step 1)")


def _check_scheduler(spec: StudySpec, report: _Report) -> None:
    scheduler = spec.search.scheduler
    chosen = [n for n in ("asha", "median") if getattr(scheduler, n) is not None]
    if len(chosen) != 1:
        report.add(("search", "scheduler"), f"got {chosen or 'nothing'}; exactly one of "
                   "asha: {max_t, grace_period, reduction_factor} or median: "
                   "{grace_period, min_samples_required}")
        return
    if scheduler.asha and scheduler.asha.max_t is not None \
            and scheduler.asha.grace_period > scheduler.asha.max_t:
        report.add(("search", "scheduler", "asha", "grace_period"),
                   f"got {scheduler.asha.grace_period} with max_t {scheduler.asha.max_t}; "
                   "grace_period <= max_t")
