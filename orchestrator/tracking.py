"""MLflow bookkeeping of a study: experiment, one parent run per `resweep run`, one child
run per trial, batched metric logging, and which trials are already done.

The store's layout (tag, artifact and status names; README "MLflow conventions") is
`analysis.store`, which `analysis` reads back with: experiment = study name; parent run
"<study>-<YYYYmmdd-HHMMSS>" (Tag.KIND = study, artifact study.yaml); one nested child run
per trial, named after it (Tag.KIND = trial; params = the flattened TrialConfig; metrics
step = epoch; artifacts trial.json and probes.json).

Only the driver writes (one process, so a SQLite store has a single writer). During a
study (`start_writer`) everything about a trial (its start, epochs, tags, end) goes
through the background `orchestrator.tracking_writer.TrackingWriter` (queued, coalesced
into few `log_batch` requests, retried, in order per run), so Tune's loop never waits on
the store and only the writer's thread uses the client; `start_trial` then returns a
handle that the writer binds to the run id once the run exists (`run_id(handle)`).
Without a writer each call is one synchronous request and the handle is the run id.

Reruns (a killed driver, `--resume`, an extended study) follow these rules:
- a trial whose trial_id has a child run with resweep.status in DONE_STATUSES
  (`workers.results`) is skipped;
- a trial whose latest child run was interrupted (left RUNNING by a killed driver, or
  KILLED by Ctrl-C) and that has a checkpoint is *continued in that run*: it resumes from
  its newest checkpoint, the epochs up to it that the killed driver never wrote are
  backfilled from the checkpoint's history (`orchestrator.tracking_resume`), only later
  epochs are logged, and the run moves under the current parent, so each trial keeps its
  whole history, every epoch once, in one run (an interrupted run that had logged no
  epoch yet is reused too, the trial starting afresh);
- otherwise (failed, or its checkpoint is gone) the old run is closed (KILLED, interrupted) if
  still open and the trial starts afresh in a new child run;
- the parent run is reused when the previous `resweep run` of the same study did not
  finish (same study file, same --set); otherwise a new parent is made and an unfinished earlier
  one is closed as KILLED.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The tag names, the paging and the store URI helpers live in analysis.store: the layout
# this writer and the analysis readers share.
from analysis.store import (EXPERIMENT_KIND, MLFLOW_STATUS, NO_SHORTCUT, SIZE_TAGS, Artifact,
                            Kind, Param as ParamName, Tag, kind_filter, search_all_runs,
                            sqlite_path)
from models.config import ConfigError
from orchestrator.tracking_resume import ResumePoint, resume_point, write_backfill
from orchestrator.tracking_store import open_client
from workers.config import TrialConfig
from workers.results import DONE_STATUSES, INTERRUPTED, RUNNING

# MLflow's limits per log_batch request (1000 metrics, 100 params, 100 tags).
MAX_PARAMS_PER_BATCH = 100


def flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """{"model": {"depth": 20}} -> {"model.depth": "20"}: one MLflow param per field."""
    if isinstance(value, dict):
        for key, inner in value.items():
            flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = str(value)
    return out


def trial_params(trial: TrialConfig) -> dict[str, str]:
    """The flattened TrialConfig (model.depth, train.lr, seed, ...) as MLflow params. A
    plain net logs model.shortcut = "none": it has no shortcut (its config keeps the
    default, so trial_id is unchanged)."""
    params = flatten("", trial.to_dict(), {})
    if not trial.model.residual and ParamName.SHORTCUT in params:
        params[ParamName.SHORTCUT] = NO_SHORTCUT
    return params


def git_commit() -> str:
    """The commit of the resweep checkout this runs from, or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@dataclass
class ChildRun:
    """What an earlier `resweep run` left for one trial_id (the newest child run)."""

    run_id: str
    status: str              # resweep.status
    mlflow_status: str       # RUNNING, FINISHED, FAILED, KILLED
    checkpoint: str | None   # Tag.CHECKPOINT: the last checkpoint logged with its epoch
    last_epoch: int          # Tag.LAST_EPOCH: the last epoch whose metrics are logged
    search_params: dict | None = None      # Tag.SEARCH_PARAMS: Optuna's proposal
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each metric
    resume: ResumePoint | None = None   # where it continues (`StudyTracker.resumable`)
    looked: bool = False                # resume is worked out (once: it reads storage)

    @property
    def resume_from(self) -> str | None:
        """The checkpoint the trial continues from (None: it starts afresh)."""
        return self.resume.checkpoint if self.resume is not None else None


@dataclass
class StudyTracker:
    """The MLflow side of one `resweep run` (driver only).

    `open` finds (or creates) the study's experiment and reads what earlier runs left;
    `start_study` makes or reuses the parent run, once there is something to run."""

    client: Any
    tracking_uri: str
    experiment_id: str
    earlier: dict[str, ChildRun] = field(default_factory=dict)  # trial_id -> newest child
    parent_run_id: str | None = None
    parent_run_name: str | None = None
    reused_parent: bool = False
    writer: Any = None   # a TrackingWriter while a study runs (`start_writer`), else None
    run_ids: dict[str, str] = field(default_factory=dict)  # start_trial handle -> run id
    _handles: Any = field(default_factory=itertools.count, repr=False)

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, tracking_uri: str, study_name: str) -> "StudyTracker":
        """The study's experiment (created if missing) and its earlier child runs."""
        client = open_client(tracking_uri)
        experiment = client.get_experiment_by_name(study_name)
        if experiment is None:
            artifact_location = None
            db = sqlite_path(tracking_uri)
            if db is not None:  # next to the database, where `make clean` looks
                artifact_location = (db.parent.resolve() / "mlartifacts").as_uri()
            experiment_id = client.create_experiment(
                study_name, artifact_location=artifact_location,
                tags=dict([EXPERIMENT_KIND]))
        elif experiment.lifecycle_stage != "active":
            raise ConfigError(
                f"study name {study_name!r}: its MLflow experiment is deleted in "
                f"{tracking_uri}; restore it (`mlflow experiments restore`) or rename the study")
        else:
            experiment_id = experiment.experiment_id
            if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
        tracker = cls(client, tracking_uri, experiment_id)
        tracker.earlier = tracker._earlier_children()
        return tracker

    def start_study(self, study_name: str, *, study_hash: str, study_text: str,
                    version: str, extra_tags: dict[str, str] | None = None) -> None:
        """The parent run: the previous one if it did not finish and ran the same study
        (study_hash covers the file and the --set overrides), else a new one (an earlier
        parent left RUNNING by a killed driver is closed)."""
        parents = search_all_runs(self.client, self.experiment_id, kind_filter(Kind.STUDY),
                                  order_by=["attributes.start_time DESC"])
        latest = parents[0] if parents else None
        if (latest is not None and latest.info.status in ("RUNNING", "KILLED")
                and latest.data.tags.get(Tag.STUDY_HASH) == study_hash):
            self.parent_run_id, self.parent_run_name = latest.info.run_id, latest.info.run_name
            self.reused_parent = True
            self.client.update_run(self.parent_run_id, status="RUNNING")
            self.client.set_tag(self.parent_run_id, Tag.STATUS, RUNNING)
            return
        if latest is not None and latest.info.status == "RUNNING":
            # A driver that was killed: its run can never finish now.
            self.client.set_tag(latest.info.run_id, Tag.STATUS, INTERRUPTED)
            self.client.set_terminated(latest.info.run_id, status=MLFLOW_STATUS[INTERRUPTED])
        self.parent_run_name = f"{study_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = {Tag.KIND: Kind.STUDY, Tag.STUDY: study_name, Tag.STUDY_HASH: study_hash,
                Tag.GIT_COMMIT: git_commit(), Tag.VERSION: version, Tag.STATUS: RUNNING,
                **(extra_tags or {})}
        self.parent_run_id = self.client.create_run(
            self.experiment_id, run_name=self.parent_run_name, tags=tags).info.run_id
        self.client.log_text(self.parent_run_id, study_text, Artifact.STUDY)

    def _earlier_children(self) -> dict[str, ChildRun]:
        runs = search_all_runs(self.client, self.experiment_id, kind_filter(Kind.TRIAL),
                               order_by=["attributes.start_time ASC"])
        earlier: dict[str, ChildRun] = {}
        for run in runs:  # oldest first: a done run wins, else the newest one
            tags = run.data.tags
            trial_id = tags.get(Tag.TRIAL_ID)
            if not trial_id:
                continue
            known = earlier.get(trial_id)
            if known is not None and known.status in DONE_STATUSES:
                continue
            search_params = tags.get(Tag.SEARCH_PARAMS)
            earlier[trial_id] = ChildRun(
                run.info.run_id, tags.get(Tag.STATUS, RUNNING), run.info.status,
                tags.get(Tag.CHECKPOINT), int(tags.get(Tag.LAST_EPOCH, "0")),
                json.loads(search_params) if search_params else None, dict(run.data.metrics))
        return earlier

    def ran_before(self) -> bool:
        """Whether any earlier `resweep run` of the study left a run here."""
        return bool(self.earlier) or bool(self.client.search_runs(
            [self.experiment_id], kind_filter(Kind.STUDY), max_results=1))

    def done_trial_ids(self) -> set[str]:
        return {tid for tid, run in self.earlier.items() if run.status in DONE_STATUSES}

    # ---- child runs ----------------------------------------------------------------
    def resumable(self, trial_id: str) -> ChildRun | None:
        """The interrupted run this trial continues in: one with a checkpoint (resume from
        the newest, backfilling what the run lacks), or one that logged no epoch yet
        (start it afresh)."""
        run = self.earlier.get(trial_id)
        if run is None or run.status not in (RUNNING, INTERRUPTED):
            return None
        if not run.looked:
            run.looked = True
            if run.checkpoint:
                run.resume = resume_point(run.checkpoint, trial_id, run.last_epoch)
        return run if run.resume is not None or run.last_epoch == 0 else None

    def run_id(self, handle: str) -> str:
        """The run id of a `start_trial` handle (bound once the writer created the run)."""
        return self.run_ids.get(handle, handle)

    def start_trial(self, trial: TrialConfig, extra_tags: dict[str, str] | None = None
                    ) -> tuple[str, int]:
        """A handle of the child run the trial logs to, and the last epoch already in it.

        Continues an interrupted run that has a checkpoint (see module docstring), else
        closes any open earlier run and creates a new one with params and trial.json; on
        the writer, queued (the handle is bound to the run id when the run exists)."""
        tags = {Tag.KIND: Kind.TRIAL, Tag.TRIAL_ID: trial.trial_id, Tag.NAME: trial.name,
                Tag.SEED: str(trial.seed), Tag.STUDY: trial.study, Tag.STATUS: RUNNING,
                Tag.PARENT_RUN_ID: self.parent_run_id, **(extra_tags or {})}
        earlier = self.resumable(trial.trial_id)
        if earlier is not None:
            self.earlier.pop(trial.trial_id)
            self._on_run(earlier.run_id, lambda: self._continue_run(earlier, tags), "resume")
            return earlier.run_id, max(earlier.last_epoch,
                                       earlier.resume.last_epoch if earlier.resume else 0)

        stale = self.earlier.pop(trial.trial_id, None)
        if stale is not None and stale.mlflow_status == "RUNNING":
            self._on_run(stale.run_id, lambda: self._close_stale(stale.run_id), "close")
        handle = f"pending-{trial.trial_id}-{next(self._handles)}"
        attempts, start_time = [], int(time.time() * 1000)   # when the trial started

        def create() -> None:
            attempts.append(1)
            run_id = self.run_ids.get(handle) or (len(attempts) > 1 and self._created(tags))
            self.run_ids[handle] = run_id or self._create_run(trial, tags, start_time)
        self._on_run(handle, create, f"start {trial.name}")
        return self.run_id(handle), 0

    def _continue_run(self, earlier: ChildRun, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.update_run(earlier.run_id, status="RUNNING")
        self.client.log_batch(earlier.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if earlier.resume is not None:
            write_backfill(self.client, earlier.run_id, earlier.resume)

    def _close_stale(self, run_id: str) -> None:
        self.client.set_tag(run_id, Tag.STATUS, INTERRUPTED)
        self.client.set_terminated(run_id, status=MLFLOW_STATUS[INTERRUPTED])

    def _created(self, tags: dict[str, str]) -> str | None:
        """A run an earlier try of this start created before its answer was lost (found
        by its parent and Tune trial id), so a retry does not create a second one."""
        if Tag.TUNE_TRIAL not in tags:
            return None
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{Tag.TUNE_TRIAL}` = '{tags[Tag.TUNE_TRIAL]}' and "
            f"tags.`{Tag.PARENT_RUN_ID}` = '{self.parent_run_id}'", max_results=1)
        return found[0].info.run_id if found else None

    def _create_run(self, trial: TrialConfig, tags: dict[str, str], start_time: int) -> str:
        from mlflow.entities import Param

        run_id = self.client.create_run(self.experiment_id, run_name=trial.name, tags=tags,
                                        start_time=start_time).info.run_id
        params = [Param(k, v) for k, v in trial_params(trial).items()]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[start:start + MAX_PARAMS_PER_BATCH])
        self.client.log_dict(run_id, trial.to_dict(), Artifact.TRIAL)
        return run_id

    def log_epoch(self, run_id: str, metrics: dict[str, float], step: int,
                  tags: dict[str, str]) -> None:
        """One result of a trial: its scalar metrics at step=epoch and tags (queued on the
        writer, else one request)."""
        from mlflow.entities import Metric, RunTag

        # The network's size is no curve: tags, not metrics (analysis.store.SIZE_TAGS).
        size = {SIZE_TAGS[k]: f"{float(v):.0f}" for k, v in metrics.items() if k in SIZE_TAGS}
        if size:
            metrics = {k: v for k, v in metrics.items() if k not in SIZE_TAGS}
            tags = {**tags, **size}
        if self.writer is not None:
            self.writer.log_epoch(run_id, metrics, step, tags)
            return
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()])

    def set_trial_tag(self, run_id: str, key: str, value: str) -> None:
        """One tag on a child run (queued after its epochs on the writer)."""
        self._on_run(run_id, lambda: self.client.set_tag(self.run_id(run_id), key, value),
                     f"tag {key}")

    def end_trial(self, run_id: str, status: str, *, probes: dict | None = None,
                  tags: dict[str, str] | None = None, error: str | None = None) -> None:
        """Close a child run: resweep.status, artifacts, MLflow status per the contract;
        on the writer, after every epoch queued for it (a FINISHED run has them all), with
        the run's end time taken now, when the trial ended, not when the write got through."""
        end_time = int(time.time() * 1000)

        def end(run_id: str = run_id) -> None:
            from mlflow.entities import RunTag

            run_id = self.run_id(run_id)
            if probes:
                self.client.log_dict(run_id, probes, Artifact.PROBES)
            if error:
                self.client.log_text(run_id, error, Artifact.ERROR)
            # The status tag last: a run a rerun sees as done is closed too (a driver killed
            # in between leaves it "running", and the rerun ends it again).
            self.client.set_terminated(run_id, status=MLFLOW_STATUS[status], end_time=end_time)
            all_tags = {Tag.STATUS: status, **(tags or {})}
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])

        self._on_run(run_id, end, f"end ({status})")

    def _on_run(self, run_id: str, fn, what: str) -> None:
        if self.writer is not None:
            self.writer.call(run_id, fn, what)
        else:
            fn()

    # ---- the writer ----------------------------------------------------------------
    def start_writer(self, **options) -> None:
        """From now on trial starts, epochs, tags and ends are queued on a background
        writer (`orchestrator.tracking_writer`; options: its keyword arguments)."""
        from orchestrator.tracking_writer import TrackingWriter, shorten_http_retries

        shorten_http_retries()
        self.writer = TrackingWriter(self.client, resolve=self.run_id, **options)

    def close_writer(self, timeout: float | None) -> bool:
        """Write what is queued, waiting at most `timeout` seconds; later calls write
        synchronously. False: the store did not take it all in time (the caller says so
        and exits; what was not written is lost to this process)."""
        writer, self.writer = self.writer, None
        return writer is None or writer.close(timeout)

    # ---- the parent ----------------------------------------------------------------
    def end_study(self, status: str, tags: dict[str, str]) -> None:
        """Close the parent run: finished (FINISHED), failed (FAILED), interrupted (KILLED)."""
        from mlflow.entities import RunTag

        all_tags = {Tag.STATUS: status, **tags}
        self.client.log_batch(self.parent_run_id,
                              tags=[RunTag(k, v) for k, v in all_tags.items()])
        self.client.set_terminated(self.parent_run_id, status=MLFLOW_STATUS[status])
