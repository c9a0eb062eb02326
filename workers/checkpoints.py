"""A trial's checkpoint files, in the folder Tune persists after each epoch.

- `checkpoint.pt` (CHECKPOINT_NAME): everything a resumed trial needs (`workers.trial`
  writes and reads it; torch.save, format FORMAT_VERSION).
- `history.json` (HISTORY_NAME): the metrics history alone, as JSON, written just before
  the checkpoint: {"trial_id", "epoch", "final" (the trial's last epoch), "history": [the
  report of each epoch]}. The driver backfills from it what a killed driver never logged
  (`orchestrator.tracking_resume`), without torch and without loading the weights.

Both are written atomically (temp file in the same folder, fsync, os.replace), so a crash
mid-write leaves the previous file intact. A checkpoint that cannot be read, or belongs to
another trial, is reported with a warning, set aside as `checkpoint.pt.corrupt`, and the
trial starts from scratch.

torch is imported only to write or read `checkpoint.pt`: the driver imports the names.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from workers.results import EPOCH

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1            # of the checkpoint file
HISTORY_NAME = "history.json"


class CheckpointWarning(RuntimeWarning):
    """A checkpoint was found but not used; the trial restarts from scratch."""


def checkpoint_file(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically (temp file + fsync + os.replace)."""
    import torch

    _write_atomically(path, "wb", lambda f: torch.save({"format": FORMAT_VERSION, **state}, f))


def save_history(checkpoint_dir: Path, trial_id: str, history: list[dict[str, Any]],
                 final: bool) -> None:
    """Write the HISTORY_NAME record of a checkpoint, atomically."""
    record = {"trial_id": trial_id, "epoch": history[-1][EPOCH] if history else 0,
              "final": final, "history": history}
    _write_atomically(Path(checkpoint_dir) / HISTORY_NAME, "w", lambda f: json.dump(record, f))


def _write_atomically(path: Path, mode: str, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
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
    import torch

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
