"""Expansion: a validated study -> the list of fully resolved `TrialConfig`s.

Steps, in order (the work grows with the cells, not with cells x seeds):
0. the cap by arithmetic: a grid whose space sizes x seeds (an upper bound, before
   constraints and merging) exceed `_HOPELESS_FACTOR` x max_trials is refused at once;
1. cells: grid = cartesian product of `space` (first key slowest); ablation = the
   baseline, then each `vary` key's values one at a time (a value equal to the baseline's
   is the baseline and is not repeated);
2. constraints drop cells (`skip`, `require`), judged on the cell's full set of values
   (varied, fixed in the file, and defaults);
3. each kept cell is resolved once, at the first seed: ModelConfig (input shape and
   classes from `workers.data.datasets`; a plain net's shortcut normalised to "A"),
   DataConfig, TrainConfig (`workers.recipes.resolve_recipe`);
4. cells with the same `trial_id` merge (a plain net across shortcut options is one);
   the exact count, merged cells x distinct seeds, is checked against max_trials;
5. every distinct model is checked and counted once (`models.complexity.model_stats`:
   architecture rules, closed-form parameters and MACs; nothing is built): an impossible
   architecture fails here, and the counts are kept for `resweep plan`;
6. only then is each merged cell repeated over the seeds, and the trials are named.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from models.complexity import ModelStats, model_stats
from models.config import ConfigError, ModelConfig
from search_spaces.loading import Problem, format_path
from search_spaces.names import format_value, trial_name, unique_names
from search_spaces.schema import StudySpec
from search_spaces.validate import ParamKey, coerce_value, is_list_field, parse_key
from workers.config import (DataConfig, Resources, TrainConfig, TrialConfig, data_config_problems,
                            model_data_problems)
from workers.data.datasets import DATASET_FACTS

# Raw grids this many times over max_trials are refused before cells are even listed.
_HOPELESS_FACTOR = 50

Cell = dict  # ParamKey -> value, in the order the file lists the keys


@dataclass
class Expansion:
    """The outcome of expanding a grid or ablation study."""

    trials: list[TrialConfig] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)   # trial_id -> varied values
    stats: dict[ModelConfig, ModelStats] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    _cells_by_id: dict[str, dict[str, Any]] | None = field(default=None, repr=False)

    def cell_values(self, trial_id: str) -> dict[str, Any]:
        """The varied values of the trial `trial_id` ({} for none), by an index."""
        if self._cells_by_id is None:
            self._cells_by_id = {}
            for trial, values in zip(self.trials, self.cells):
                self._cells_by_id.setdefault(trial.trial_id, values)
        return self._cells_by_id.get(trial_id, {})


class Resolver:
    """Turns cells (varied values) into resolved configs for one study."""

    def __init__(self, spec: StudySpec, locations):
        self.spec = spec
        self.locations = locations
        # A null model field means "not set"; null data/train values are real values
        # (train_size null = all images, grad_clip null = no clipping).
        self.fixed_model = {k: v for k, v in spec.model.model_dump(exclude_unset=True).items()
                            if v is not None}
        self.fixed_data = spec.data.model_dump(exclude_unset=True)
        self.fixed_train = {k: v for k, v in spec.train.model_dump(exclude_unset=True).items()
                            if k != "recipe"}
        self.resources = Resources(cpu=spec.resources.cpu, gpu=spec.resources.gpu)
        self._recipes: dict = {}

    def values(self, cell: Cell) -> tuple[dict, dict, dict, str]:
        """model, data, train-override dicts and recipe name for one cell (unresolved)."""
        model = dict(self.fixed_model)
        data = dict(self.fixed_data)
        train = dict(self.fixed_train)
        recipe = self.spec.train.recipe
        for key, value in cell.items():
            value = coerce_value(key, value)
            if key.section == "model":
                model[key.field] = value
            elif key.section == "data":
                data[key.field] = value
            elif key.field == "recipe":
                recipe = value
            else:
                train[key.field] = value
        if model.get("stages") is not None:
            model["stages"] = tuple(model["stages"])
        facts = DATASET_FACTS.get(DataConfig(**data).dataset)
        if facts is not None:
            model.setdefault("in_channels", facts.channels)
            model.setdefault("num_classes", facts.classes)
            model.setdefault("image_size", facts.image_size)
        return model, data, train, recipe

    def resolve(self, cell: Cell, seed: int, name: str = "") -> tuple[TrialConfig, ModelConfig]:
        """(trial with normalised model, the model as written) for one cell and seed."""
        model, data, train, recipe = self.values(cell)
        raw_model = ModelConfig(**model)
        problems = data_config_problems(DataConfig(**data)) + \
            _shape_problems(raw_model, data.get("dataset", DataConfig.dataset))
        try:
            train_config = self._recipe(recipe, train, raw_model)
        except ConfigError as err:
            problems += str(err).splitlines()
        if problems:
            raise ConfigError("\n".join(problems))
        trial = TrialConfig(name=name, model=normalise_model(raw_model),
                            data=DataConfig(**data), train=train_config, seed=seed,
                            resources=self.resources, study=self.spec.name)
        return trial, raw_model

    def _recipe(self, recipe: str, train: dict, model: ModelConfig) -> TrainConfig:
        from workers.recipes import resolve_recipe

        # The recipe may depend on the model (paper-cifar's warm-up for 110 layers).
        cache_key = (recipe, repr(sorted(train.items())), model)
        if cache_key not in self._recipes:
            self._recipes[cache_key] = resolve_recipe(recipe, train, model=model)
        return self._recipes[cache_key]

    def lookup(self, cell: Cell, key: ParamKey, trial: TrialConfig,
               raw_model: ModelConfig) -> Any:
        """The value of `key` in this cell as written (plain nets keep their shortcut)."""
        if key in cell:
            return coerce_value(key, cell[key])
        if key.section == "model":
            return getattr(raw_model, key.field)
        return getattr(getattr(trial, key.section), key.field)


def _shape_problems(model: ModelConfig, dataset: str) -> list[str]:
    """The network must take the data set's images and cover its classes (the same rule
    the worker applies when it loads the data, checked here before anything runs)."""
    facts = DATASET_FACTS.get(dataset)
    if facts is None or not facts.on_device:  # image folders: any crop size, classes read
        return []
    return model_data_problems(model, dataset, facts.channels, facts.image_size, facts.classes)


def normalise_model(cfg: ModelConfig) -> ModelConfig:
    """Fields that cannot change the network set to their defaults, so identical networks
    compare equal: a plain net has no shortcut ("A"); an mlp has no block or shortcut;
    only an mlp has `hidden`."""
    defaults = ModelConfig()
    changes: dict[str, Any] = {"width": float(cfg.width)}
    if not cfg.residual:
        changes["shortcut"] = defaults.shortcut
    if cfg.family == "mlp":
        changes.update(block=defaults.block, shortcut=defaults.shortcut,
                       width=defaults.width)
    else:
        changes["hidden"] = defaults.hidden
    return cfg.replace(**changes)


# ---- cells ----------------------------------------------------------------------------

def grid_cells(spec: StudySpec, keys: dict[str, ParamKey]) -> list[Cell]:
    names = list(spec.space)
    lists = [spec.space[n] for n in names]
    return [{keys[n]: v for n, v in zip(names, combo)} for combo in itertools.product(*lists)]


def ablation_cells(spec: StudySpec, keys: dict[str, ParamKey]) -> list[Cell]:
    baseline = {keys[n]: v for n, v in spec.baseline.items()}
    cells = [baseline]
    for name, values in spec.vary.items():
        for value in values:
            cell = dict(baseline)
            cell[keys[name]] = value
            if not _same_cell(cell, baseline):
                cells.append(cell)
    return cells


def _same_cell(a: Cell, b: Cell) -> bool:
    return all(_same(a[k], b.get(k)) for k in a) and a.keys() == b.keys()


def _same(a, b) -> bool:
    """Equality that keeps True apart from 1 (YAML users mean different things)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) \
        else a == b


def matches(condition: dict, value_of) -> bool:
    """True when every key of `condition` has the given value (a list: any of them)."""
    for text, wanted in condition.items():
        key = parse_key(text)
        actual = value_of(key)
        options = wanted if isinstance(wanted, list) and not is_list_field(key) else [wanted]
        if key.field in ("stages", "milestones"):
            actual = list(actual) if actual is not None else None
        if not any(_same(coerce_value(key, o) if o is not None else None, actual)
                   for o in options):
            return False
    return True


def excluded_by(spec: StudySpec, value_of) -> int | None:
    """Index of the first constraint that drops a cell, or None when it is kept."""
    for i, rule in enumerate(spec.constraints):
        if not matches(rule.when, value_of):
            continue
        if rule.skip:
            return i
        if rule.require is not None and not matches(rule.require, value_of):
            return i
    return None


# ---- the whole expansion --------------------------------------------------------------

def expand(spec: StudySpec, keys: dict[str, ParamKey], locations) -> Expansion:
    """Expand a grid or ablation spec whose sections are valid; problems are collected."""
    out = Expansion()
    resolver = Resolver(spec, locations)
    # Seeds are counted, not listed, until the exact count below is within max_trials.
    n_seeds = len(set(spec.seeds)) if spec.seeds is not None else spec.repeats
    sizes = [len(v) for v in spec.space.values()] if spec.design == "grid" else []
    if spec.design == "grid":
        raw = math.prod(sizes) * n_seeds   # an upper bound: before constraints and merging
        if raw > spec.max_trials * _HOPELESS_FACTOR:
            out.problems.append(_over_cap(locations, spec, raw, sizes, n_seeds))
            return out
        cells, origin, varied_names = grid_cells(spec, keys), "space", list(spec.space)
    else:
        cells, origin, varied_names = ablation_cells(spec, keys), "vary", list(spec.vary)
    varied = [keys[n] for n in varied_names]

    # One trial per kept cell at the first seed, merged by trial_id. A trial_id covers the
    # seed, so every seed multiplies the merged cells alike: merged cells x seeds.
    first_seed = spec.seeds[0] if spec.seeds is not None else 0
    bases: dict[str, tuple[TrialConfig, Cell]] = {}
    seen_errors: set[str] = set()
    for index, cell in enumerate(cells):
        try:
            base, raw_model = resolver.resolve(cell, first_seed)
        except (ConfigError, TypeError, ValueError) as err:
            _attribute(out, err, cell, spec, origin, locations, seen_errors)
            continue

        def value_of(key, _cell=cell, _base=base, _raw=raw_model):
            return resolver.lookup(_cell, key, _base, _raw)

        rule = excluded_by(spec, value_of)
        if rule is not None:
            if spec.design == "ablation" and index == 0:
                out.problems.append(Problem(locations.where(("baseline",)), "baseline",
                                            f"got a baseline that constraints[{rule}] "
                                            "excludes; the baseline must be a valid cell"))
                return out
            continue
        bases.setdefault(base.trial_id, (base, cell))
    if out.problems:
        return out
    if not bases:
        out.problems.append(Problem(locations.where(("constraints",)), "constraints",
                                    f"got rules that exclude all {len(cells)} cells; "
                                    "at least one trial must remain"))
        return out

    count = len(bases) * n_seeds
    if count > spec.max_trials:
        out.problems.append(_over_cap(locations, spec, count, sizes, n_seeds,
                                      after_rules=True))
        return out

    for trial, cell in bases.values():
        stats = model_stats(trial.model, out.stats)
        if isinstance(stats, ConfigError):
            _attribute(out, stats, cell, spec, origin, locations, seen_errors)
    if out.problems:
        return out

    seeds = list(dict.fromkeys(spec.seeds)) if spec.seeds is not None \
        else list(range(spec.repeats))
    named = []
    for base, cell in bases.values():
        values = {k.dotted: coerce_value(k, v) for k, v in cell.items()}
        cell_text = {k.text: coerce_value(k, v) for k, v in cell.items()}
        for seed in seeds:
            named.append(base.replace(seed=seed, name=trial_name(base, varied, values, seed)))
            out.cells.append(dict(cell_text))
    out.trials = unique_names(named)
    return out


# "model.depth: got 21; ..." and "train.epochs/train.iterations: got ...; ..."
_FIELD_ERROR = re.compile(r"^(model|data|train)\.(\w+)(?:/\S+)?: (.*)$")


def _attribute(out: Expansion, err: Exception, cell: Cell, spec: StudySpec, origin: str,
               locations, seen: set[str]) -> None:
    """Turn a resolution/build error into Problems at the most useful key of the file."""
    context = ", ".join(f"{k.text}={format_value(v)}" for k, v in cell.items())
    for line in str(err).splitlines() or [type(err).__name__]:
        match = _FIELD_ERROR.match(line)
        path: tuple
        message = line
        if match:
            section, field_name, rest = match.groups()
            varied = [k for k in cell if k.section == section and k.field == field_name]
            if varied:
                key = varied[0]
                path = _cell_value_path(spec, origin, key, cell[key])
                message = rest
            elif field_name in getattr(spec, section).model_fields_set:
                path = (section, field_name)
                message = rest
            else:  # a default value: point at the section that could set it
                path = (section, field_name)
                message = rest.replace("; ", " (the default); ", 1)
        else:
            path = (origin,)
        if (path, message) in seen:
            continue
        seen.add((path, message))
        varied_path = path[0] in ("space", "vary", "baseline")
        text = f"{message} (e.g. the cell {context})" if context and varied_path else message
        out.problems.append(Problem(locations.where(path), format_path(path), text))


def _cell_value_path(spec: StudySpec, origin: str, key: ParamKey, value) -> tuple:
    """("space", "depth", 3): the list item that gave this value (its own line)."""
    if origin == "space":
        values = spec.space[key.text]
        for i, v in enumerate(values):
            if _same(v, value):
                return ("space", key.text, i)
        return ("space", key.text)
    if spec.vary and key.text in spec.vary:
        for i, v in enumerate(spec.vary[key.text]):
            if _same(v, value):
                return ("vary", key.text, i)
    return ("baseline", key.text)


def _over_cap(locations, spec: StudySpec, count: int, sizes: list[int], n_seeds: int,
              after_rules: bool = False) -> Problem:
    shape = " x ".join(map(str, sizes)) + f" cells x {n_seeds} seed(s)" if sizes else ""
    how = "after constraints and merging" if after_rules else f"({shape})"
    where = ("space",) if spec.design == "grid" else ("vary",)
    return Problem(locations.where(where), where[0],
                   f"got {count} trials {how}; at most max_trials={spec.max_trials} "
                   "(narrow the space or raise max_trials)")
