"""Command-line overrides in the style of Hydra: `--set train.epochs=5`.

The value is parsed as YAML (`[20, 56]` is a list, `true` a bool, `1e-3` a float). The path
walks mappings; under `space`, `baseline` and `vary` the rest of the path is one key, so
`space.train.lr=[0.1,0.05]` sets the entry `train.lr`, and `space.depth=null` removes
the entry `depth`. A null model field means "not set" (the default). Overrides are applied to the raw
file data before validation, so an overridden value is checked like a written one.
"""

from __future__ import annotations

from search_spaces.loading import Locations, Problem, load_yaml
from search_spaces.schema import StudySpec

# Sections whose keys may themselves contain dots (parameter keys such as train.lr).
_PARAM_SECTIONS = ("space", "baseline", "vary")


def split_override_path(path: str) -> tuple:
    """"space.train.lr" -> ("space", "train.lr"); "constraints.0.skip" -> (.., 0, ..)."""
    head, _, rest = path.partition(".")
    if head in _PARAM_SECTIONS and rest:
        return (head, rest)
    parts = tuple(int(p) if p.isdigit() else p for p in path.split("."))
    return parts


def apply_overrides(data: dict, overrides, locations: Locations) -> list[Problem]:
    """Apply each `key.path=value` to `data` in place; returns problems (bad syntax, an
    unknown top-level key, a path through a non-mapping)."""
    problems: list[Problem] = []
    where = f"{locations.filename} (--set {{}})"
    for text in overrides:
        path_text, eq, value_text = str(text).partition("=")
        path_text = path_text.strip()
        if not eq or not path_text:
            problems.append(Problem(where.format(text), path_text or "--set",
                                    f"got {text!r}; write --set key.path=value"))
            continue
        value, _, value_problems = load_yaml(value_text, f"--set {text}")
        if value_problems:
            problems.append(Problem(where.format(text), path_text,
                                    f"got {value_text!r}; a YAML value "
                                    f"({value_problems[0].message})"))
            continue
        path = split_override_path(path_text)
        if path[0] not in StudySpec.model_fields:
            problems.append(Problem(where.format(text), path_text,
                                    f"got the unknown key {path[0]!r}; allowed: "
                                    f"{', '.join(StudySpec.model_fields)}"))
            continue
        if value is None and path[0] in _PARAM_SECTIONS and len(path) == 2:
            section = data.get(path[0])
            if isinstance(section, dict):
                section.pop(path[1], None)  # `--set space.depth=null` removes the entry
            locations.overrides[path] = text
            continue
        error = _set(data, path, value)
        if error:
            problems.append(Problem(where.format(text), path_text, error))
            continue
        locations.overrides[path] = text
    return problems


def _set(data: dict, path: tuple, value) -> str | None:
    """Set data[path] = value, creating mappings on the way; an error text or None."""
    node = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                return f"got the index {part}; the list has {len(node)} items"
            node = node[part]
            continue
        if not isinstance(node, dict):
            return f"got a path through {type(node).__name__}; only mappings have keys"
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list) and isinstance(last, int):
        if last >= len(node):
            return f"got the index {last}; the list has {len(node)} items"
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        return f"got a path through {type(node).__name__}; only mappings have keys"
    return None
