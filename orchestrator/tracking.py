"""MLflow bookkeeping of a study: experiment, one parent run per `resweep run`, one child
run per trial, batched metric logging, and which trials are already done.

The store's layout (tag, artifact and status names; README "MLflow conventions") is
`analysis.store`, which `analysis` reads back with: experiment = study name; parent run
"<study>-<YYYYmmdd-HHMMSS>" (Tag.KIND = study, artifact study.yaml); one nested child run
per trial, named after it (Tag.KIND = trial; params = the flattened TrialConfig; metrics
step = epoch; artifacts trial.json and probes.json).

Only the driver writes (one process, so a SQLite store has a single writer). During a
study (`start_writer`) epoch results and trial ends go through the background
`orchestrator.tracking_writer.TrackingWriter` (queued, coalesced into few `log_batch`
requests, retried, in order per run), so Tune's loop never waits on the store; without a
writer each call is one synchronous request.

Reruns (a killed driver, `--resume`, an extended study) follow these rules:
- a trial whose trial_id has a child run with resweep.status in DONE_STATUSES
  (`workers.results`) is skipped;
- a trial whose latest child run was interrupted (left RUNNING by a killed driver, or
  KILLED by Ctrl-C) and whose last checkpoint still exists is *continued in that run*: it
  resumes from the checkpoint, logs only the epochs after it and moves under the current
  parent, so each trial keeps its whole history in one run (an interrupted run that had
  logged no epoch yet is reused too, the trial starting afresh);
- otherwise (failed, or its checkpoint is gone) the old run is closed (KILLED, interrupted) if
  still open and the trial starts afresh in a new child run;
- the parent run is reused when the previous `resweep run` of the same study did not
  finish (same study file, same --set); otherwise a new parent is made and an unfinished earlier
  one is closed as KILLED.
"""

from __future__ import annotations

import json
import os
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


def answering_tracking_uri(option_value: str | None) -> str:
    """The store a command uses: --tracking-uri, else $MLFLOW_TRACKING_URI, else
    ./mlflow.db; a tracking server among them is asked first (`check_tracking_server`
    within $RESWEEP_CONNECT_TIMEOUT), naming the option or variable the URI came from.
    run, report and ui call this before they open or create anything."""
    from analysis.store import default_tracking_uri
    from orchestrator.arg_types import connect_timeout

    from_env = not option_value and os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = option_value or default_tracking_uri()
    check_tracking_server(tracking_uri, connect_timeout(),
                          "$MLFLOW_TRACKING_URI" if from_env else "--tracking-uri")
    return tracking_uri


def check_tracking_server(tracking_uri: str, timeout_s: float,
                          option: str = "--tracking-uri") -> None:
    """Raise ConfigError, saying what to check, when an http(s) tracking URI has no server
    answering within `timeout_s` (one GET of /health; MLflow's own client would retry for
    about four minutes). Any HTTP answer passes (a 401 or a proxy's 404: MLflow's first
    request says more), and so do TLS errors (certificates are MLflow's settings)."""
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    if not tracking_uri.lower().startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):
            return
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused: nothing listens on that port"
        elif isinstance(reason, TimeoutError) or "timed out" in str(reason):
            why = f"no answer within {timeout_s:g} s"
        else:
            why = str(reason)[:200]
    where = urllib.parse.urlsplit(tracking_uri).netloc or tracking_uri
    raise ConfigError(
        f"{option}: no MLflow tracking server answers at {tracking_uri} ({why}); check "
        f"that `mlflow server` is running and listening on {where} (and, from another "
        "machine, started with --host 0.0.0.0), or use a local store (sqlite:///PATH.db); "
        f"on a slow network raise $RESWEEP_CONNECT_TIMEOUT (now {timeout_s:g} s)")


def open_client(tracking_uri: str):
    """A client on the store, created and upgraded now, before any trial writes.

    For SQLite this runs MLflow's migrations once in this process (several processes
    migrating a fresh store at once fail). A tracking server that does not answer is a
    ConfigError naming the URI: an http(s) server is asked first, within
    $RESWEEP_CONNECT_TIMEOUT (`check_tracking_server`), so the run fails in seconds, not
    after MLflow's retries; those stay as they are for everything after (a server that
    goes away mid-study is waited for)."""
    from orchestrator.arg_types import connect_timeout

    check_tracking_server(tracking_uri, connect_timeout())
    # MLflow prints a "View run ... at" line per finished run against a server; the
    # progress display and the summary already say where the runs are.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow.tracking import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.search_experiments(max_results=1)  # creates/upgrades the schema, or connects
    except Exception as err:  # noqa: BLE001 - MLflow raises many types for a bad store
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--tracking-uri: cannot open the MLflow store {tracking_uri!r}: "
                          f"{first[:300]}") from None
    return client


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
        """The interrupted run this trial continues in: one with a checkpoint that still
        exists (resume from it), or one that logged no epoch yet (start it afresh)."""
        run = self.earlier.get(trial_id)
        if run is None or run.status not in (RUNNING, INTERRUPTED):
            return None
        if run.last_epoch == 0:
            return run
        if run.checkpoint and checkpoint_exists(run.checkpoint):
            return run
        return None

    def start_trial(self, trial: TrialConfig, extra_tags: dict[str, str] | None = None
                    ) -> tuple[str, int]:
        """The child run a trial logs to, and the last epoch already in it.

        Continues an interrupted run that has a checkpoint (see module docstring), else
        closes any open earlier run and creates a new one with params and trial.json."""
        from mlflow.entities import Param, RunTag

        tags = {Tag.KIND: Kind.TRIAL, Tag.TRIAL_ID: trial.trial_id, Tag.NAME: trial.name,
                Tag.SEED: str(trial.seed), Tag.STUDY: trial.study, Tag.STATUS: RUNNING,
                Tag.PARENT_RUN_ID: self.parent_run_id, **(extra_tags or {})}
        earlier = self.resumable(trial.trial_id)
        if earlier is not None:
            self.client.update_run(earlier.run_id, status="RUNNING")
            self.client.log_batch(earlier.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.earlier.pop(trial.trial_id)
            return earlier.run_id, earlier.last_epoch

        stale = self.earlier.pop(trial.trial_id, None)
        if stale is not None and stale.mlflow_status == "RUNNING":
            self.client.set_tag(stale.run_id, Tag.STATUS, INTERRUPTED)
            self.client.set_terminated(stale.run_id, status=MLFLOW_STATUS[INTERRUPTED])
        run_id = self.client.create_run(self.experiment_id, run_name=trial.name,
                                        tags=tags).info.run_id
        params = [Param(k, v) for k, v in trial_params(trial).items()]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[start:start + MAX_PARAMS_PER_BATCH])
        self.client.log_dict(run_id, trial.to_dict(), Artifact.TRIAL)
        return run_id, 0

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
        self._on_run(run_id, lambda: self.client.set_tag(run_id, key, value), f"tag {key}")

    def end_trial(self, run_id: str, status: str, *, probes: dict | None = None,
                  tags: dict[str, str] | None = None, error: str | None = None) -> None:
        """Close a child run: resweep.status, artifacts, MLflow status per the contract;
        on the writer, after every epoch queued for it (a FINISHED run has them all), with
        the run's end time taken now, when the trial ended, not when the write got through."""
        end_time = int(time.time() * 1000)

        def end() -> None:
            from mlflow.entities import RunTag

            if probes:
                self.client.log_dict(run_id, probes, Artifact.PROBES)
            if error:
                self.client.log_text(run_id, error, Artifact.ERROR)
            all_tags = {Tag.STATUS: status, **(tags or {})}
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
            self.client.set_terminated(run_id, status=MLFLOW_STATUS[status], end_time=end_time)

        self._on_run(run_id, end, f"end ({status})")

    def _on_run(self, run_id: str, fn, what: str) -> None:
        if self.writer is not None:
            self.writer.call(run_id, fn, what)
        else:
            fn()

    # ---- the writer ----------------------------------------------------------------
    def start_writer(self, **options) -> None:
        """From now on epochs, trial ends and trial tags are queued on a background
        writer (`orchestrator.tracking_writer`; options: its keyword arguments)."""
        from orchestrator.tracking_writer import TrackingWriter

        self.writer = TrackingWriter(self.client, **options)

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


def checkpoint_exists(path: str) -> bool:
    """Whether a checkpoint directory (local path or storage URI) is still there."""
    import pyarrow.fs

    try:
        fs, fs_path = pyarrow.fs.FileSystem.from_uri(path)
    except (pyarrow.ArrowInvalid, ValueError):
        fs, fs_path = pyarrow.fs.LocalFileSystem(), os.path.abspath(path)
    try:
        return fs.get_file_info(fs_path).type == pyarrow.fs.FileType.Directory
    except OSError:
        return False

