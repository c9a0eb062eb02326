"""Reading a study file: strict YAML with a line for every key, and the located problems.

`load_yaml(text, filename)` returns the plain data, a `Locations` map from key paths
(tuples such as ("space", "depth", 2)) to 1-based line numbers, and the problems found.
Strict means `yaml.safe_load` semantics plus: explicit Python tags (`!!python/object:...`)
are refused like `safe_load` refuses them; so are duplicate keys, which PyYAML would
silently let the last one win. Numbers in exponent form without a dot (`1e-4`) are
floats, as in YAML 1.2 (YAML 1.1 would read them as strings).

Hostile input is refused cheaply, before anything is built (caps and reasons: README.md
"Caps"): `read_text` reads at most `MAX_FILE_BYTES` + 1 bytes and refuses what is not
UTF-8 text (NUL, UTF-16, invalid UTF-8, control characters); the composer refuses values
nested deeper than `MAX_NESTING` (before Python's recursion limit), more than `MAX_VALUES`
values, each alias counted as what it expands to (a "billion laughs" stops at its first
line over the cap), and integers longer than `MAX_DIGITS` digits.

`Problem` is one invalid value located in the file, `StudyError` all of a file's
problems. A line reads ``<file>:<line>: <key.path>: got <value>; <what is allowed>``;
problems that come from a command-line override name it instead of a line
(``<file> (--set train.lr=x): train.lr: got 'x'; ...``). The CLI prints each line and
exits with status 2.

The `--set` overrides are applied by `search_spaces.overrides`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path

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


# ---- caps on the text itself (search_spaces/README.md, "Caps") -----------------------

MAX_FILE_BYTES = 1_000_000  # the shipped studies are under 2 KB
MAX_NESTING = 50            # levels of lists/mappings; a study needs 4
MAX_VALUES = 10_000         # YAML nodes, aliases expanded; the shipped studies have < 200
MAX_DIGITS = 30             # of an integer; no field takes more than 10


def _line_col(text, pos: int) -> tuple[int, int]:
    """1-based line and column of offset `pos` in a str or bytes."""
    newline = "\n" if isinstance(text, str) else b"\n"
    return text.count(newline, 0, pos) + 1, pos - (text.rfind(newline, 0, pos) + 1) + 1


def decode_text(data: bytes, filename: str, what: str = "a study file") -> str:
    """`data` as text, or StudyError: too large, UTF-16/32, NUL bytes, not UTF-8."""
    def refuse(message: str, line: int | None = None):
        where = f"{filename}:{line}" if line else filename
        raise StudyError([Problem(where, "", message)])

    if len(data) > MAX_FILE_BYTES:
        refuse(f"got more than {MAX_FILE_BYTES} bytes; {what} is at most {MAX_FILE_BYTES} "
               "bytes (the shipped studies are under 2 KB)")
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            refuse(f"got a {name} file (it starts with a {name} byte-order mark); {what} "
                   "is UTF-8 text: save it as UTF-8")
    nul = data.find(b"\0")
    if nul >= 0:
        line, col = _line_col(data, nul)
        refuse(f"got a NUL byte at line {line}, column {col}; {what} is UTF-8 text, not "
               "a binary (or UTF-16) file", line)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, col = _line_col(data, err.start)
        refuse(f"got the byte 0x{data[err.start]:02x} at line {line}, column {col}, which is "
               f"not UTF-8; {what} is UTF-8 text: save it as UTF-8", line)
    problems = text_problems(text, filename, what)
    if problems:
        raise StudyError(problems)
    return text


def read_text(path: str | Path, filename: str, what: str = "a study file") -> str:
    """The file's text, reading at most MAX_FILE_BYTES + 1 bytes (`/dev/zero` too).
    Raises OSError as `open` does, StudyError for what `decode_text` refuses."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    return decode_text(data, filename, what)


def text_problems(text: str, filename: str, what: str = "a study file") -> list[Problem]:
    """Text no study could be: too large, NUL or other control characters."""
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        return [Problem(filename, "", f"got more than {MAX_FILE_BYTES} bytes; {what} is "
                        f"at most {MAX_FILE_BYTES} bytes (the shipped studies are under 2 KB)")]
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        line, col = _line_col(text, bad.start())
        char = ord(bad.group())
        name = "a NUL byte" if char == 0 else f"the control character U+{char:04X}"
        return [Problem(f"{filename}:{line}", "", f"got {name} at line {line}, column {col}; "
                        f"{what} is printable UTF-8 text")]
    return []


# ---- strict YAML with line numbers ---------------------------------------------------

class _Refused(yaml.MarkedYAMLError):
    """A cap hit while composing; `problem` is the whole message, at `problem_mark`."""


class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader whose float resolver also accepts `1e-4` and `5E3`, and whose composer
    refuses deep nesting and too many values (aliases expanded) as it goes."""

    def __init__(self, stream):
        super().__init__(stream)
        self._nesting = 0
        self._values = 0                    # nodes so far, an alias as what it expands to
        self._expanded: dict[int, int] = {}  # id(node) -> values in its subtree

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self._expanded.get(id(node))
            if size is None:  # `&a [*a]`: the anchor is still open
                raise _Refused(problem=f"got the alias *{event.anchor} inside its own "
                               "anchor; a study is a tree, not a recursive structure",
                               problem_mark=event.start_mark)
            self._count(size, event, f" once aliases are expanded (*{event.anchor} here "
                                     f"stands for {size} values)")
            return node
        self._nesting += 1
        if self._nesting > MAX_NESTING:
            raise _Refused(problem=f"got values nested more than {MAX_NESTING} levels deep; "
                           f"at most {MAX_NESTING} levels (a study needs 4)",
                           problem_mark=event.start_mark)
        before = self._values
        self._count(1, event, "")
        node = super().compose_node(parent, index)
        self._nesting -= 1
        self._expanded[id(node)] = self._values - before
        return node

    def _count(self, n: int, event, how: str) -> None:
        self._values += n
        if self._values > MAX_VALUES:
            raise _Refused(problem=f"got more than {MAX_VALUES} values{how}; at most "
                           f"{MAX_VALUES} values (the shipped studies have under 200)",
                           problem_mark=event.start_mark)


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
                return f"{self.filename} (--set {shown_override(self.overrides[path[:n]])})"
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return f"{self.filename}:{self.lines[path[:n]]}"
        return self.filename


def shown_override(text: str, limit: int = 80) -> str:
    """An override as messages quote it: cut to one readable length."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_yaml(text: str, filename: str) -> tuple[object, Locations, list[Problem]]:
    """Parse one YAML document. Returns (data, locations, problems); data is None when
    the text cannot be parsed at all."""
    locations = Locations(filename)
    problems = text_problems(text, filename)
    if problems:
        return None, locations, problems
    loader = _StrictSafeLoader(text)
    try:
        node = loader.get_single_node()
    except _Refused as err:
        return None, locations, [Problem(f"{filename}:{err.problem_mark.line + 1}", "",
                                         err.problem)]
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
        try:
            loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        except yaml.MarkedYAMLError as err:
            problems.append(Problem(f"{locations.filename}:{node.start_mark.line + 1}",
                                    format_path(path), f"got a bad merge key: {err.problem}"))
            return None
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
    if node.tag == "tag:yaml.org,2002:int" and \
            len(node.value.lstrip("+-").replace("_", "")) > MAX_DIGITS:
        problems.append(Problem(f"{locations.filename}:{node.start_mark.line + 1}",
                                format_path(path), f"got a number of {len(node.value)} "
                                f"digits; at most {MAX_DIGITS} digits"))
        return None
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError) as err:
        problems.append(Problem(f"{locations.filename}:{node.start_mark.line + 1}",
                                format_path(path), f"got {node.value!r}; {err}"))
        return None
