"""`load_study(path, overrides)` -> `Study`; `expand_study(study)` -> trials.

Loading reads the YAML strictly, applies `--set` overrides, validates types and
cross-field rules, and (for grid and ablation designs) expands it, checking every distinct
network against the architecture rules and counting it in closed form (no network is
built). Every problem found is raised together as one `StudyError`.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from models.complexity import ModelStats, model_stats
from models.config import ConfigError, ModelConfig
from search_spaces.expand import Expansion, expand
from search_spaces.loading import Locations, Problem, StudyError, load_yaml, read_text
from search_spaces.overrides import apply_overrides
from search_spaces.onset import DEPTH_KEY, RESIDUAL_KEY
from search_spaces.onset_checks import onset_problems
from search_spaces.schema import SearchSpec, StudySpec
from search_spaces.validate import ParamKey, schema_problems, semantic_problems
from workers.config import Resources, TrialConfig


@dataclass
class Study:
    """A validated study. `spec` is the typed file; the rest is derived from it.

    source_text is the file as written; source_hash (12 hex digits) covers it and the
    overrides, so a `--set` run is told apart from the plain file.
    """

    name: str
    description: str
    design: str                      # grid | ablation | search | onset
    repeats: int
    seeds: list[int]
    resources: Resources
    search: SearchSpec | None        # design: search only
    max_trials: int
    spec: StudySpec
    source_path: str
    source_text: str
    source_hash: str
    overrides: tuple[str, ...] = ()
    keys: dict[str, ParamKey] = field(default_factory=dict, repr=False)
    locations: Locations | None = field(default=None, repr=False)
    expansion: Expansion | None = field(default=None, repr=False)

    @property
    def max_concurrent(self) -> int | None:
        """Trials at a time the study asks for (search.max_concurrent), or None."""
        return self.search.max_concurrent if self.search else None

    @property
    def varied_keys(self) -> list[ParamKey]:
        """The keys the design varies, in file order (space or vary; onset: depth and
        residual)."""
        if self.design == "onset":
            return [DEPTH_KEY, RESIDUAL_KEY]
        names = list(self.spec.space or {}) if self.design != "ablation" \
            else list(self.spec.vary or {})
        return [self.keys[n] for n in names if n in self.keys]

    def model_stats(self, model: ModelConfig) -> ModelStats:
        """Parameters and MACs of a network of this study (closed form, cached per net)."""
        cache = self.expansion.stats if self.expansion else {}
        stats = model_stats(model, cache)
        if isinstance(stats, ConfigError):
            raise stats
        return stats

    def cell_values(self, trial: TrialConfig) -> dict[str, Any]:
        """The varied values that produced `trial` (as the file names them)."""
        return self.expansion.cell_values(trial.trial_id) if self.expansion else {}


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> Study:
    """Read, check and (grid/ablation) expand a study file; raise StudyError with every
    problem, one per line."""
    path = Path(path)
    filename = str(path)
    try:
        text = read_text(path, filename)  # bounded; refuses what is not UTF-8 text
    except FileNotFoundError:
        raise StudyError([Problem(filename, "", "got a path that does not exist; a study "
                                  "file (see search_spaces/*.yaml)")]) from None
    except OSError as err:
        raise StudyError([Problem(filename, "", f"cannot be read: {err}")]) from None
    return load_study_text(text, filename, overrides)


def load_study_text(text: str, filename: str = "<study>",
                    overrides: Sequence[str] = ()) -> Study:
    """As `load_study`, from the text of a file."""
    from workers.recipes import RECIPES

    data, locations, problems = load_yaml(text, filename)
    if data is None and not problems:
        problems.append(Problem(filename, "", "got an empty file; a study mapping "
                                "(name, design, space, ...)"))
    if data is not None and not isinstance(data, dict):
        problems.append(Problem(locations.where(()), "", f"got a {type(data).__name__}; a "
                                "study is a mapping (name: ..., design: ..., ...)"))
    if problems and not isinstance(data, dict):
        raise StudyError(_in_file_order(problems))
    problems += apply_overrides(data, overrides, locations)

    schema_count = len(problems)
    spec, bad_sections = _validate_types(data, locations, problems)
    # A value the YAML reader refused (a tag, a 5000-digit number) is null in `data`:
    # its "got None" from the schema would only echo the first message.
    refused = {p.path for p in problems[:schema_count] if p.path}
    problems[schema_count:] = [p for p in problems[schema_count:] if p.path not in refused]
    partly_bad = frozenset(p.path.split(".")[0].split("[")[0]
                           for p in problems[schema_count:])
    keys: dict[str, ParamKey] = {}
    expansion = None
    if spec is not None:
        semantic, keys = semantic_problems(spec, bad_sections, locations, RECIPES,
                                           partly_bad)
        problems += semantic
        needed = {"design", "space", "baseline", "vary", "constraints", "model", "data",
                  "train", "repeats", "seeds", "max_trials", "resources", "name"}
        if not problems and spec.design in ("grid", "ablation") \
                and not bad_sections & needed:
            expansion = expand(spec, keys, locations)
            problems += expansion.problems
        elif not problems and spec.design == "search":
            from search_spaces.search import feasibility_problems

            problems += feasibility_problems(spec, keys, locations)
        elif not problems and spec.design == "onset" and spec.onset is not None:
            problems += onset_problems(spec, locations)
    if problems:
        raise StudyError(_in_file_order(problems))

    digest = hashlib.sha256(text.encode())
    for item in overrides:
        digest.update(f"\n--set {item}".encode())
    return Study(name=spec.name, description=spec.description, design=spec.design,
                 repeats=len(spec.seeds) if spec.seeds else spec.repeats,
                 seeds=list(spec.seeds) if spec.seeds else list(range(spec.repeats)),
                 resources=Resources(cpu=spec.resources.cpu, gpu=spec.resources.gpu),
                 search=spec.search, max_trials=spec.max_trials, spec=spec,
                 source_path=filename, source_text=text,
                 source_hash=digest.hexdigest()[:12], overrides=tuple(overrides),
                 keys=keys, locations=locations, expansion=expansion)


def _validate_types(data: dict, locations: Locations, problems: list[Problem]):
    """Validate with pydantic. On errors, validate again without the bad entries (a bad
    field, space key or constraint; a whole section only when the section itself is
    bad) so the cross-field checks can still look at everything else.

    Returns (spec or None, names of top-level sections that were dropped whole)."""
    try:
        return StudySpec.model_validate(data), set()
    except ValidationError as err:
        problems += schema_problems(err, locations)
        errors = err.errors()
    if any(not e["loc"] for e in errors):
        return None, set()
    partial = copy.deepcopy(data)
    whole: set[str] = set()
    for e in errors:
        loc = e["loc"]
        if len(loc) == 1 or e["type"] == "missing" and len(loc) == 2:
            whole.add(loc[0])
            partial.pop(loc[0], None)
            continue
        container = partial.get(loc[0])
        if isinstance(container, dict):
            container.pop(loc[1], None)
        elif isinstance(container, list) and isinstance(loc[1], int) \
                and loc[1] < len(container):
            container[loc[1]] = None  # removed below, keeping the other indices valid
    for name, value in partial.items():
        if isinstance(value, list):
            partial[name] = [v for v in value if v is not None]
    partial.setdefault("name", "unnamed")
    try:
        return StudySpec.model_validate(partial), whole
    except ValidationError as err:
        still = {e["loc"][0] for e in err.errors() if e["loc"]}
        partial = {k: v for k, v in partial.items() if k not in still}
        partial.setdefault("name", "unnamed")
        try:
            return StudySpec.model_validate(partial), whole | still
        except ValidationError:
            return None, whole | still


def expand_study(study: Study) -> list[TrialConfig]:
    """The study's trials, fully resolved, merged and named (grid and ablation designs).

    A search design has no fixed list: use `search_space(study)` and
    `trial_from_params(study, params, seed)`."""
    if study.design == "search":
        raise ConfigError(f"{study.source_path}: design: got 'search'; expand_study lists "
                          "grid and ablation trials; a search proposes them: use "
                          "search_spaces.search_space(study) and trial_from_params(...)")
    if study.design == "onset":
        raise ConfigError(f"{study.source_path}: design: got 'onset'; expand_study lists "
                          "grid and ablation trials; the onset design decides them step by "
                          "step: use search_spaces.onset (design_of, replay, trial_for)")
    if study.expansion is None:  # built by hand rather than by load_study
        study.expansion = expand(study.spec, study.keys, study.locations or Locations(
            study.source_path))
        if study.expansion.problems:
            raise StudyError(study.expansion.problems)
    return list(study.expansion.trials)


def _line_of(problem: Problem) -> int:
    match = re.search(r":(\d+)$", problem.where)
    return int(match.group(1)) if match else 0


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=_line_of)
