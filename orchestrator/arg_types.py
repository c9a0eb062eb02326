"""argparse `type=` checkers for counts and sizes: a bad value is argparse's usage error
(exit status 2) naming the option and the value received."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number >= 1 (trials at a time, CPUs, GPUs)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; a whole number >= 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (a count of retries)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {value}; a whole number >= 0")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (a memory size)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"got {value:g}; a number > 0")
    return value
