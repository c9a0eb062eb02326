"""Where an interrupted trial continues, and the epochs its MLflow run is missing.

A driver killed while its tracking writer still held results leaves a trial's child run
with epochs 1..k (Tag.LAST_EPOCH = k), though the trial had already checkpointed epoch
m >= k in its Tune trial folder. The next `resweep run` (`StudyTracker.resumable`):

- looks in that folder (the parent of the Tag.CHECKPOINT path) for the newest checkpoint
  whose `history.json` (`workers.checkpoints`) belongs to the trial, and resumes from it;
- backfills from that history the epochs after k, up to m, or up to m - 1 when m is the
  trial's last epoch: the resumed trial then reports that epoch again, with the final
  keys (params, macs, probes, status), as an uninterrupted trial does;
- before writing, reads which epochs the run already has (its EPOCH metric), so a retried
  or repeated backfill never records an epoch twice.

Checkpoints written before history.json existed still resume, as before: from the tagged
checkpoint itself, with nothing to backfill.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from dataclasses import dataclass, field

from analysis.store import Tag
from workers.checkpoints import CHECKPOINT_NAME, HISTORY_NAME
from workers.results import EPOCH

MAX_METRICS_PER_REQUEST = 1000   # MLflow's limit per log_batch


@dataclass
class ResumePoint:
    """The checkpoint an interrupted trial continues from, and what its run may lack."""

    checkpoint: str                  # the checkpoint folder (local path or storage URI)
    epoch: int                       # the epoch it was written after (0: unknown)
    backfill: list[dict] = field(default_factory=list)  # reports, epochs after the logged

    @property
    def last_epoch(self) -> int:
        """The last epoch in the run once the backfill is written (0: none)."""
        return self.backfill[-1][EPOCH] if self.backfill else 0


def resume_point(tagged_checkpoint: str, trial_id: str, logged_epoch: int
                 ) -> ResumePoint | None:
    """See module docstring; None when there is nothing to resume from."""
    fs, path = _filesystem(tagged_checkpoint)
    folder_uri = tagged_checkpoint.rstrip("/").rsplit("/", 1)[0]
    newest: tuple[int, str, dict] | None = None
    for name in _checkpoint_folders(fs, os.path.dirname(path.rstrip("/"))):
        record = _history(fs, f"{os.path.dirname(path.rstrip('/'))}/{name}", trial_id)
        if record is not None and (newest is None or record["epoch"] > newest[0]):
            newest = (record["epoch"], f"{folder_uri}/{name}", record)
    if newest is None:
        return ResumePoint(tagged_checkpoint, logged_epoch) \
            if checkpoint_exists(tagged_checkpoint) else None
    epoch, checkpoint, record = newest
    upto = epoch - 1 if record.get("final") else epoch
    backfill = [report for report in record["history"]
                if logged_epoch < int(report.get(EPOCH, 0)) <= upto]
    return ResumePoint(checkpoint, epoch, backfill)


def write_backfill(client, run_id: str, point: ResumePoint) -> int:
    """Log the point's backfill epochs the run does not hold yet, with the checkpoint and
    last-epoch tags last; returns how many epochs were written. Safe to repeat."""
    from mlflow.entities import Metric, RunTag

    if not point.backfill:
        return 0
    held = {m.step for m in client.get_metric_history(run_id, EPOCH)}
    missing = [r for r in point.backfill if int(r[EPOCH]) not in held]
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, int(report[EPOCH]))
               for report in missing for key, value in report.items()
               if isinstance(value, numbers.Real) and not isinstance(value, bool)]
    for start in range(0, len(metrics), MAX_METRICS_PER_REQUEST):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_REQUEST])
    client.log_batch(run_id, tags=[RunTag(Tag.LAST_EPOCH, str(point.last_epoch)),
                                   RunTag(Tag.CHECKPOINT, point.checkpoint)])
    return len(missing)


def checkpoint_exists(path: str) -> bool:
    """Whether a checkpoint directory (local path or storage URI) is still there."""
    import pyarrow.fs

    fs, fs_path = _filesystem(path)
    try:
        return fs.get_file_info(fs_path).type == pyarrow.fs.FileType.Directory
    except OSError:
        return False


def _filesystem(path: str):
    import pyarrow
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(path)
    except (pyarrow.ArrowInvalid, ValueError):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(path)


def _checkpoint_folders(fs, trial_folder: str) -> list[str]:
    """Names of the checkpoint_* folders Tune keeps in a trial folder."""
    import pyarrow.fs

    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(trial_folder))
    except OSError:   # the folder is gone (cleaned up, another machine's disk)
        return []
    return [info.base_name for info in infos
            if info.type == pyarrow.fs.FileType.Directory
            and info.base_name.startswith("checkpoint_")]


def _history(fs, checkpoint_folder: str, trial_id: str) -> dict | None:
    """The folder's history record when it is the trial's and its checkpoint is there."""
    import pyarrow.fs

    try:
        if fs.get_file_info(f"{checkpoint_folder}/{CHECKPOINT_NAME}").type \
                != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(f"{checkpoint_folder}/{HISTORY_NAME}") as stream:
            record = json.loads(stream.read())
    except (OSError, ValueError):   # missing, partly copied, not JSON
        return None
    if not isinstance(record, dict) or record.get("trial_id") != trial_id \
            or not isinstance(record.get("history"), list) \
            or not isinstance(record.get("epoch"), int):
        return None
    return record
