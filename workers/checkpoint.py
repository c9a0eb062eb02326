"""Epoch-boundary checkpoints: one file, `<checkpoint_dir>/checkpoint.pt`, written atomically.

The file holds everything a resumed trial needs to continue exactly like an uninterrupted
one: model and optimizer state, the data generator (shuffling + augmentation), torch's
global RNG states, the warm-up state (the lr itself is a function of the iteration),
epoch, iteration, elapsed time and the metrics history.

Writing goes to a temporary file in the same directory, is flushed to disk, then
`os.replace`d over the old one, so a crash mid-write leaves the previous checkpoint
intact. A checkpoint that cannot be read, or belongs to another trial, is reported with
a warning, set aside as `checkpoint.pt.corrupt`, and the trial starts from scratch.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointWarning(RuntimeWarning):
    """A checkpoint was found but not used; the trial restarts from scratch."""


def checkpoint_file(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (temp file + fsync + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _set_aside(path: Path, reason: str) -> None:
    warnings.warn(f"checkpoint {path}: {reason}; the trial starts from scratch "
                  f"(the file is kept as {path.name}.corrupt)", CheckpointWarning, stacklevel=3)
    try:
        os.replace(path, path.with_name(path.name + ".corrupt"))
    except OSError:
        pass


def load_checkpoint(path: Path, trial_id: str) -> dict[str, Any] | None:
    """The saved state of trial `trial_id`, or None when there is none to resume from."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, garbage, wrong pickle: all mean "cannot resume"
        _set_aside(path, f"unreadable ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        _set_aside(path, "not a resweep checkpoint of format "
                         f"{FORMAT_VERSION}")
        return None
    if state.get("trial_id") != trial_id:
        _set_aside(path, f"belongs to trial {state.get('trial_id')!r}, not {trial_id!r}")
        return None
    return state
