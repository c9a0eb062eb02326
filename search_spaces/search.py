"""Search designs: the distributions a sampler draws from, and a proposal -> trial.

`search_space(study)` returns one plain-data *distribution spec* per space key (the key
as written in the file: "depth", "train.lr"):

    {"type": "choice", "values": [20, 56, 110]}
    {"type": "int",    "low": 1, "high": 8, "step": 1, "log": False}
    {"type": "float",  "low": 0.01, "high": 0.3, "step": None, "log": True}

Bounds are inclusive. These map one to one onto Optuna's CategoricalDistribution,
IntDistribution(low, high, step=step, log=log) and FloatDistribution(low, high,
step=step, log=log) (`step` None for log ranges). A grid-style list in a search space
is a choice.

`trial_from_params(study, params, seed)` resolves one proposal ({key: value} for every
space key) into a TrialConfig, or raises `InfeasibleParams` (a ConfigError) when a
constraint excludes it or its network cannot be built; the orchestrator should report
such a proposal to the sampler as failed/pruned rather than train it.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from models.complexity import model_stats
from models.config import ConfigError
from search_spaces.expand import Resolver, excluded_by
from search_spaces.names import format_value, trial_name
from search_spaces.loading import Problem, format_path
from search_spaces.schema import ChoiceDistribution, IntDistribution, StudySpec
from search_spaces.validate import ParamKey, check_value, coerce_value
from workers.config import TrialConfig

# Above this many combinations of candidate values, load-time checks use a sample.
_FEASIBILITY_SAMPLE = 2048
_INT_ENUMERATE_LIMIT = 64


class InfeasibleParams(ConfigError):
    """A proposal that no trial can run: excluded by a constraint or an impossible net."""


def distribution_spec(entry) -> dict[str, Any]:
    """One space entry of a search study as plain data (see the module docstring)."""
    if isinstance(entry, list):
        return {"type": "choice", "values": list(entry)}
    if isinstance(entry, ChoiceDistribution):
        return {"type": "choice", "values": list(entry.choice)}
    if isinstance(entry, IntDistribution):
        b = entry.int
        return {"type": "int", "low": b.low, "high": b.high, "step": b.step, "log": b.log}
    b = entry.float
    return {"type": "float", "low": b.low, "high": b.high, "step": b.step, "log": b.log}


def search_space(study) -> dict[str, dict[str, Any]]:
    """Key -> distribution spec for a `design: search` study, in file order."""
    if study.design != "search":
        raise ConfigError(f"{study.source_path}: design: got {study.design!r}; "
                          "search_space is for design: search (use expand_study)")
    return {name: distribution_spec(entry) for name, entry in study.spec.space.items()}


def trial_from_params(study, params: dict[str, Any], seed: int) -> TrialConfig:
    """The trial a proposal describes; raises InfeasibleParams if it cannot run."""
    spec: StudySpec = study.spec
    expected = list(spec.space)
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in spec.space]
    if missing or extra:
        raise ConfigError(f"params: got keys {sorted(params)}; expected exactly the space "
                          f"keys {expected}")
    cell: dict[ParamKey, Any] = {}
    for name in expected:
        key = study.keys[name]
        value = params[name]
        if hasattr(value, "item"):  # numpy scalars from a sampler
            value = value.item()
        problem = check_value(key, value)
        if problem:
            raise InfeasibleParams(f"params.{name}: {problem}")
        cell[key] = value
    resolver = Resolver(spec, study.locations)
    try:
        trial, raw_model = resolver.resolve(cell, seed)
    except (ConfigError, TypeError, ValueError) as err:
        raise InfeasibleParams(str(err)) from None
    rule = excluded_by(spec, lambda k: resolver.lookup(cell, k, trial, raw_model))
    if rule is not None:
        raise InfeasibleParams(f"params {params}: excluded by constraints[{rule}]")
    stats = model_stats(trial.model, study.expansion.stats if study.expansion else {})
    if isinstance(stats, ConfigError):
        raise InfeasibleParams(str(stats))
    values = {k.dotted: coerce_value(k, v) for k, v in cell.items()}
    return trial.replace(name=trial_name(trial, study.varied_keys, values))


# ---- load-time checks -----------------------------------------------------------------

def candidates(entry) -> tuple[list[Any], bool]:
    """Values to try for one distribution at load time, and whether that is all of them."""
    d = distribution_spec(entry)
    if d["type"] == "choice":
        return d["values"], True
    if d["type"] == "int":
        values = list(range(d["low"], d["high"] + 1, d["step"]))
        if len(values) <= _INT_ENUMERATE_LIMIT:
            return values, True
        return sorted({values[0], values[len(values) // 2], values[-1]}), False
    low, high = d["low"], d["high"]
    middle = math.sqrt(low * high) if d["log"] and low > 0 else (low + high) / 2
    return [low, middle, high], False


def feasibility_problems(spec: StudySpec, keys: dict[str, ParamKey],
                         locations) -> list[Problem]:
    """Values of a search space that can never give a runnable trial.

    Every combination of candidate values (all choices, all integers of short ranges,
    ends and middle of float ranges) is resolved and its network built on the meta
    device. A choice value (or an integer of an enumerated range) that is never part of
    a valid combination is a problem (values only constraints exclude are intended),
    and so is a space with no runnable combination."""
    names = list(spec.space)
    lists = []
    complete = {}
    for name in names:
        values, complete[name] = candidates(spec.space[name])
        lists.append(values)
    combos = list(itertools.islice(itertools.product(*lists), _FEASIBILITY_SAMPLE * 4))
    if len(combos) > _FEASIBILITY_SAMPLE:
        combos = random.Random(0).sample(combos, _FEASIBILITY_SAMPLE)
    resolver = Resolver(spec, locations)
    validated: dict = {}   # ModelConfig -> None | first error line
    feasible: set[tuple[str, Any]] = set()
    first_error: dict[tuple[str, Any], str] = {}
    any_feasible = False
    for combo in combos:
        cell = {keys[n]: v for n, v in zip(names, combo)}
        reason = None
        try:
            trial, raw_model = resolver.resolve(cell, 0)
            rule = excluded_by(spec, lambda k: resolver.lookup(cell, k, trial, raw_model))
            if rule is not None:
                reason = f"excluded by constraints[{rule}]"
            elif trial.model not in validated:
                # The architecture rules and the closed-form counts (microseconds, no
                # network built): what model_stats refuses, no trial can run.
                stats = model_stats(trial.model)
                validated[trial.model] = str(stats).splitlines()[0] \
                    if isinstance(stats, ConfigError) else None
                reason = validated[trial.model]
            else:
                reason = validated[trial.model]
        except (ConfigError, TypeError, ValueError) as err:
            reason = str(err).splitlines()[0]
        excluded = reason is not None and reason.startswith("excluded by constraints")
        for name, value in zip(names, combo):
            tag = (name, _hashable(value))
            if reason is None or excluded:  # a value a rule excludes is meant to be so
                feasible.add(tag)
            else:
                first_error.setdefault(tag, reason)
        any_feasible = any_feasible or reason is None

    problems: list[Problem] = []
    if not any_feasible:
        example = next(iter(first_error.values()), "")
        problems.append(Problem(locations.where(("space",)), "space",
                                f"got a space in which no combination gives a runnable "
                                f"trial; e.g. {example}"))
        return problems
    for name, values in zip(names, lists):
        if not complete[name]:
            continue
        entry = spec.space[name]
        bad = [v for v in values if (name, _hashable(v)) not in feasible]
        if not bad:
            continue
        if isinstance(entry, IntDistribution):
            path = ("space", name, "int")
            problems.append(Problem(
                locations.where(path), format_path(path),
                f"got {len(bad)} of {len(values)} values that never give a runnable trial "
                f"(e.g. {bad[0]}: {first_error[(name, _hashable(bad[0]))]}); use a step "
                "or a choice of valid values"))
            continue
        for value in bad:
            items = entry if isinstance(entry, list) else entry.choice
            index = next(i for i, v in enumerate(items) if _hashable(v) == _hashable(value))
            path = ("space", name, index) if isinstance(entry, list) else \
                ("space", name, "choice", index)
            problems.append(Problem(locations.where(path), format_path(path),
                                    f"got {format_value(value)}, which never gives a "
                                    f"runnable trial: {first_error[(name, _hashable(value))]}"))
    return problems


def _hashable(value):
    return (type(value).__name__, tuple(value) if isinstance(value, list) else value)
