"""Reading a study file: strict YAML with a line for every key, the `--set` overrides
applied to it, and the located problems.

`load_yaml(text, filename)` returns the plain data, a `Locations` map from key paths
(tuples such as ("space", "depth", 2)) to 1-based line numbers, and the problems found.
Strict means `yaml.safe_load` semantics plus: explicit Python tags (`!!python/object:...`)
are refused like `safe_load` refuses them; so are duplicate keys, which PyYAML would
silently let the last one win. Numbers in exponent form without a dot (`1e-4`) are
floats, as in YAML 1.2 (YAML 1.1 would read them as strings).

`Problem` is one invalid value located in the file, `StudyError` all of a file's
problems. A line reads ``<file>:<line>: <key.path>: got <value>; <what is allowed>``;
problems that come from a command-line override name it instead of a line
(``<file> (--set train.lr=x): train.lr: got 'x'; ...``). The CLI prints each line and
exits with status 2.

`apply_overrides(data, overrides, locations)` applies command-line overrides in the style
of Hydra (`--set train.epochs=5`) to the loaded data, before validation, so an overridden
value is checked like a written one. The value is parsed as YAML (`[20, 56]` is a list,
`true` a bool, `1e-3` a float). The path walks mappings; under `space`, `baseline` and
`vary` the rest of the path is one key, so `space.train.lr=[0.1,0.05]` sets the entry
`train.lr`, and `space.depth=null` removes the entry `depth`. A null model field means
"not set" (the default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from models.config import ConfigError


# ---- located problems -----------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One invalid value: where it is, what it is, and what would be allowed."""

    where: str    # "file:line" or "file (--set ...)"
    path: str     # dotted key path, list items as [i]: "space.depth[2]"
    message: str  # "got 21; a basic cifar net needs depth = 6n+2"

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}" if self.path else \
            f"{self.where}: {self.message}"


class StudyError(ConfigError):
    """A study file has one or more problems; `problems` holds them in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def format_path(parts: tuple) -> str:
    """("space", "depth", 2) -> "space.depth[2]"; keys with dots stay whole."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def short_repr(value: object, limit: int = 60) -> str:
    """repr() cut to one readable line (a whole mapping can be the offending value)."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- strict YAML with line numbers ---------------------------------------------------

class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader whose float resolver also accepts `1e-4` and `5E3`."""


_StrictSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))

_SAFE_TAGS = {f"tag:yaml.org,2002:{t}" for t in
              ("str", "int", "float", "bool", "null", "map", "seq", "timestamp",
               "binary", "set", "omap", "pairs", "merge")}


class Locations:
    """Key path -> line; a path not recorded falls back to its nearest recorded parent."""

    def __init__(self, filename: str):
        self.filename = filename
        self.lines: dict[tuple, int] = {}
        self.overrides: dict[tuple, str] = {}  # path -> the --set text that wrote it

    def where(self, path: tuple) -> str:
        """'file:line' for a file value, 'file (--set k=v)' for an overridden one."""
        path = tuple(path)
        for n in range(len(path), -1, -1):  # an override replaces what the file said
            if path[:n] in self.overrides:
                return f"{self.filename} (--set {self.overrides[path[:n]]})"
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return f"{self.filename}:{self.lines[path[:n]]}"
        return self.filename


def load_yaml(text: str, filename: str) -> tuple[object, Locations, list[Problem]]:
    """Parse one YAML document. Returns (data, locations, problems); data is None when
    the text cannot be parsed at all."""
    locations = Locations(filename)
    loader = _StrictSafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        what = " ".join(p for p in (err.context, err.problem) if p)
        return None, locations, [Problem(f"{filename}:{line}", "",
                                         f"not valid YAML: {what}")]
    except yaml.YAMLError as err:
        return None, locations, [Problem(filename, "", f"not valid YAML: {err}")]
    finally:
        loader.dispose()
    problems: list[Problem] = []
    if node is None:
        return None, locations, problems
    data = _to_python(loader, node, (), locations, problems)
    return data, locations, problems


def _to_python(loader, node, path: tuple, locations: Locations, problems: list[Problem]):
    """Build plain data from a node tree, recording the line of every key and item."""
    locations.lines.setdefault(path, node.start_mark.line + 1)
    if node.tag not in _SAFE_TAGS:
        problems.append(Problem(f"{locations.filename}:{node.start_mark.line + 1}",
                                format_path(path),
                                f"got the tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r}; "
                                "only plain YAML values are allowed (no tags)"))
        return None
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        result: dict = {}
        first_line: dict = {}
        for key_node, value_node in node.value:
            key = _to_python(loader, key_node, path + ("<key>",), locations, problems)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                problems.append(Problem(f"{locations.filename}:{line}", format_path(path),
                                        f"got the key {short_repr(key)}; keys must be "
                                        "plain names"))
                continue
            if key in first_line:
                problems.append(Problem(f"{locations.filename}:{line}",
                                        format_path(path + (key,)),
                                        f"got a duplicate key (first at line "
                                        f"{first_line[key]}); each key may appear once"))
                continue
            first_line[key] = line
            locations.lines[path + (key,)] = line
            result[key] = _to_python(loader, value_node, path + (key,), locations, problems)
        locations.lines.pop(path + ("<key>",), None)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(loader, item, path + (i,), locations, problems)
                for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as err:
        problems.append(Problem(f"{locations.filename}:{node.start_mark.line + 1}",
                                format_path(path), f"got {node.value!r}; {err}"))
        return None


# ---- command-line overrides (--set key.path=value) --------------------------------

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
    # The study schema (pydantic) only here: `resweep train --set` reads values with
    # load_yaml and must not need it.
    from search_spaces.schema import StudySpec

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
