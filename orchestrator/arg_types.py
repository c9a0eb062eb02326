"""The grammar every `resweep` command shares: argparse `type=` checkers and the options
that mean the same in each command (`--set`, `-q/--quiet`).

A bad value is an argparse usage error (exit status 2, one line) that names the option,
the value received and what is allowed: ``argument --port: got 0; a port number 1..65535``.
Values of `--set` and `--where` are YAML (`56`, `0.1`, `1e-3`, `true`, `null`, `[20, 56]`,
`A`), read by the study-file loader, so a value means the same on the command line as in
a study file. The study loader is imported only when such an option is given: `resweep
--help` stays light.
"""

from __future__ import annotations

import argparse


def _number(text: str, kind, allowed: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; {allowed}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1 (trials at a time, CPUs, GPUs)."""
    value = _number(text, int, "a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; a whole number >= 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (a count of retries)."""
    value = _number(text, int, "a whole number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {value}; a whole number >= 0")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (a memory size)."""
    value = _number(text, float, "a number > 0")
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"got {value:g}; a number > 0")
    return value


def port(text: str) -> int:
    """A TCP port, 1..65535 (0, "any free port", is refused: the address must be known
    before the server starts, to print it)."""
    value = _number(text, int, "a port number 1..65535")
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"got {value}; a port number 1..65535")
    return value


def yaml_value(text: str, what: str):
    """`text` parsed as one YAML value, as a study file reads it; `what` names it in the
    error ("--set train.lr=...")."""
    from search_spaces.yaml_loader import load_yaml

    value, _, problems = load_yaml(text, what)
    if problems:
        reason = " ".join(problems[0].message.split())  # one line
        raise argparse.ArgumentTypeError(f"got {text!r}; a YAML value ({reason})")
    return value


def key_value(text: str) -> tuple[str, object]:
    """`KEY=VALUE` -> (KEY, VALUE parsed as YAML); KEY is a dotted path, not checked here."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"got {text!r}; KEY=VALUE, e.g. depth=56")
    return key, yaml_value(value, text)


def override(text: str) -> str:
    """A `--set KEY=VALUE`: checked for syntax (KEY=VALUE, a YAML value) and kept as
    written, since the study loader applies it (and error messages quote it)."""
    key_value(text)
    return text


def add_set_option(parser: argparse.ArgumentParser, target: str = "study") -> None:
    """`--set KEY=VALUE` (repeatable) into `args.overrides`: an override of a field of the
    study file (or, `target="trial"`, of a trial config), whatever the command."""
    fields = "a field of the study file" if target == "study" else \
        "a field of the study file (STUDY) or of the trial (--config)"
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        type=override, metavar="KEY=VALUE",
                        help=f"override {fields}; VALUE is YAML, e.g. --set train.epochs=2 "
                             "--set space.depth=[20,56] (repeatable)")


def add_quiet_option(parser: argparse.ArgumentParser, shows: str) -> None:
    """`-q/--quiet`: no progress and no tables, only the outcome (`shows`) and errors."""
    parser.add_argument("-q", "--quiet", action="store_true",
                        help=f"print only {shows} and errors; no progress or tables")
