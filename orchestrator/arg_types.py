"""The grammar every `resweep` command shares: argparse `type=` checkers and the options
that mean the same in each command (`--set`, `-q/--quiet`).

A bad number is an argparse usage error (exit status 2, one line) that names the option,
the value received and what is allowed: ``argument --port: got 0; a port number 1..65535``.
Values of `--set KEY=VALUE` (and train's `--where`) are YAML (`56`, `0.1`, `1e-3`, `true`,
`null`, `[20, 56]`, `A`), read by the study-file loader, so a value means the same on the
command line as in a study file; a malformed item is a ConfigError (exit status 2), for a
study reported with the file's other problems. The study loader is imported only when
such an item is read: `resweep --help` stays light.
"""

from __future__ import annotations

import argparse
import math
import os

# How long `resweep run` waits for a tracking server or a Ray cluster to answer before it
# starts anything (README, "When a service does not answer"); raise it for slow networks.
CONNECT_TIMEOUT_ENV = "RESWEEP_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT_S = 10.0


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


def seconds_from_env(name: str, default: float, *, high: float, zero_ok: bool,
                     what: str) -> float:
    """Seconds from the environment variable `name` (unset or empty: `default`), a number
    > 0 (>= 0 with `zero_ok`) and <= `high`; anything else is a ConfigError (exit 2)
    saying what the seconds are for (`what`)."""
    from models.config import ConfigError

    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 <= value if zero_ok else 0 < value) or not value <= high:  # also refuses nan
        raise ConfigError(f"${name}: got {text!r}; seconds to wait for {what}, a number "
                          f"{'>=' if zero_ok else '>'} 0 and <= {high:g}")
    return value


def connect_timeout() -> float:
    """Seconds to wait for a service to answer before a run starts: $RESWEEP_CONNECT_TIMEOUT
    (a number > 0 and <= 3600), default 10. A bad value is a ConfigError (exit status 2)."""
    return seconds_from_env(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S, high=3600,
                            zero_ok=False, what="a service")


def split_key_value(text: str, option: str) -> tuple[list[str], object]:
    """`train.epochs=2` -> (["train", "epochs"], 2): the VALUE read as YAML, as a study
    file reads it. Raises ConfigError naming `option` ("--set") for a malformed item.

    (`--set` on a study is applied by the study loader itself, which reports a bad item
    with every other problem of the file; this is for the items a command reads itself:
    train's `--where` and its `--set` on a `--config` trial.)"""
    from models.config import ConfigError
    from search_spaces.overrides import parse_key_value

    key, value, error = parse_key_value(text, option, f"{option} {text}")
    if error:
        raise ConfigError(f"{option} {text}: {error}")
    return key.split("."), value


def add_set_option(parser: argparse.ArgumentParser, target: str = "study") -> None:
    """`--set KEY=VALUE` (repeatable) into `args.overrides`: an override of a field of the
    study file (or, `target="trial"`, of a trial config), whatever the command."""
    fields = "a field of the study file" if target == "study" else \
        "a field of the study file (STUDY) or of the trial (--config)"
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help=f"override {fields}; VALUE is YAML, e.g. --set train.epochs=2 "
                             "--set space.depth=[20,56] (repeatable)")


def add_quiet_option(parser: argparse.ArgumentParser, shows: str) -> None:
    """`-q/--quiet`: no progress and no tables, only the outcome (`shows`) and errors."""
    parser.add_argument("-q", "--quiet", action="store_true",
                        help=f"print only {shows} and errors; no progress or tables")
