"""Command-line overrides of a study file (`--set key.path=value`) and the one reader of
KEY=VALUE items.

`apply_overrides(data, overrides, locations)` applies command-line overrides in the style
of Hydra (`--set train.epochs=5`) to the loaded data, before validation, so an overridden
value is checked like a written one. The value is parsed as YAML (`[20, 56]` is a list,
`true` a bool, `1e-3` a float). The path walks mappings; under `space`, `baseline` and
`vary` the rest of the path is one key, so `space.train.lr=[0.1,0.05]` sets the entry
`train.lr`, and `space.depth=null` removes the entry `depth`. A null model field means
"not set" (the default).
"""

from __future__ import annotations

from search_spaces.loading import Locations, Problem, load_yaml, short_repr, shown_override

# Sections whose keys may themselves contain dots (parameter keys such as train.lr).
_PARAM_SECTIONS = ("space", "baseline", "vary")


def split_override_path(path: str) -> tuple:
    """"space.train.lr" -> ("space", "train.lr"); "constraints.0.skip" -> (.., 0, ..)."""
    head, _, rest = path.partition(".")
    if head in _PARAM_SECTIONS and rest:
        return (head, rest)
    parts = tuple(int(p) if p.isdigit() else p for p in path.split("."))
    return parts


def parse_key_value(text: str, option: str, filename: str) -> tuple[str, object, str | None]:
    """`train.epochs=2` -> ("train.epochs", 2, None): the VALUE read as YAML, as a study
    file reads it. A malformed item -> (key, None, what is wrong and how to write it).
    The one reader of KEY=VALUE items (`--set` here, train's `--set`/`--where`)."""
    key, eq, value_text = str(text).partition("=")
    key = key.strip()
    if not eq or not key:
        return key, None, (f"got {short_repr(text)}; write {option} key.path=value, "
                           f"e.g. {option} model.depth=56")
    value, _, problems = load_yaml(value_text, filename)
    if problems:
        reason = " ".join(problems[0].message.split())  # one line
        return key, None, f"got {short_repr(value_text)}; a YAML value ({reason})"
    return key, value, None


def apply_overrides(data: dict, overrides, locations: Locations) -> list[Problem]:
    """Apply each `key.path=value` to `data` in place; returns problems (bad syntax, an
    unknown top-level key, a path through a non-mapping)."""
    # The study schema (pydantic) only here: `resweep train --set` reads values with
    # load_yaml and must not need it.
    from search_spaces.schema import StudySpec

    problems: list[Problem] = []
    where = f"{locations.filename} (--set {{}})"
    for text in overrides:
        shown = shown_override(text)
        path_text, value, error = parse_key_value(text, "--set", f"--set {shown}")
        if error:
            problems.append(Problem(where.format(shown), path_text or "--set", error))
            continue
        path = split_override_path(path_text)
        if path[0] not in StudySpec.model_fields:
            problems.append(Problem(where.format(shown), path_text,
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
            problems.append(Problem(where.format(shown), path_text, error))
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
