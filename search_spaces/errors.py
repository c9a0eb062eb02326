"""`StudyError`: every problem of one study file, one line each.

A line reads ``<file>:<line>: <key.path>: got <value>; <what is allowed>``; problems that
come from a command-line override name it instead of a line
(``<file> (--set train.lr=x): train.lr: got 'x'; ...``). The CLI prints each line and
exits with status 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.config import ConfigError


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
