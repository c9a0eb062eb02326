"""The layout of a resweep MLflow store: tag, artifact and status names, and the helpers
both the writer (`orchestrator.tracking`) and the readers (`analysis.runs`, `resweep ui`)
use to find a store and page through its runs.

- experiment = study name, tagged mlflow.experimentKind=custom_model_development;
- one parent run per `resweep run` (Tag.KIND = Kind.STUDY): Tag.STUDY, STUDY_HASH,
  GIT_COMMIT, VERSION, DESIGN, RAY_STORAGE, STATUS; at the end the outcome counts
  (`trials_tag`), BEST_RUN_ID, BEST_TRIAL, `best_metric_tag`; artifact Artifact.STUDY;
- one nested child run per trial (Tag.KIND = Kind.TRIAL, mlflow.parentRunId), named after
  the trial: Tag.TRIAL_ID, NAME, SEED, STATUS, ...; params = the flattened TrialConfig
  (dotted keys); per-epoch metrics with step = epoch (`workers.results`); artifacts
  Artifact.TRIAL, PROBES, ERROR.

The names are what existing stores hold: changing one orphans them (a rerun would not
find its done trials, a report would not find its runs). Nothing here imports MLflow at
import time (`resweep --help` stays light); the helpers import it when called.
"""

from __future__ import annotations

import os
from pathlib import Path

from workers.results import DIVERGED, FAILED, FINISHED, INTERRUPTED, MACS, PARAMS, STOPPED


class Tag:
    """MLflow tag names (resweep.*, and the two of MLflow's own that resweep sets)."""

    KIND = "resweep.kind"                      # Kind.STUDY (parent) | Kind.TRIAL (child)
    STATUS = "resweep.status"                  # a workers.results status, or RUNNING
    STUDY = "resweep.study"                    # the study's name (parent and child)
    # parent runs
    STUDY_HASH = "resweep.study_hash"          # the file and its --set overrides
    GIT_COMMIT = "resweep.git_commit"
    VERSION = "resweep.version"
    DESIGN = "resweep.design"                  # grid | ablation | search | onset
    RAY_STORAGE = "resweep.ray_storage"        # Tune's trial folders of this run
    OVERRIDES = "resweep.overrides"            # the run's --set items (JSON list)
    BEST_RUN_ID = "resweep.best_run_id"
    BEST_TRIAL = "resweep.best_trial"
    # child runs
    TRIAL_ID = "resweep.trial_id"
    NAME = "resweep.name"
    SEED = "resweep.seed"
    TUNE_TRIAL = "resweep.tune_trial"          # Tune's id of the trial in its run
    SEARCH_PARAMS = "resweep.search_params"    # the searcher's proposal (JSON)
    LAST_EPOCH = "resweep.last_epoch"          # the last epoch whose metrics are logged
    CHECKPOINT = "resweep.checkpoint"          # the checkpoint logged with that epoch
    WORKER_HOST = "resweep.worker_host"
    WORKER_PID = "resweep.worker_pid"
    WORKER_FAILURES = "resweep.worker_failures"
    DUPLICATE_RESULTS = "resweep.duplicate_results"  # re-reported epochs dropped
    DIVERGED_EPOCH = "resweep.diverged_epoch"
    ERROR = "resweep.error"                    # the last line of the error
    PARAM_COUNT = "resweep.params"             # trainable parameters (workers.results.PARAMS)
    MACS = "resweep.macs"                      # MACs per image (workers.results.MACS)
    # MLflow's own
    PARENT_RUN_ID = "mlflow.parentRunId"
    EXPERIMENT_KIND = "mlflow.experimentKind"


class Kind:
    """Values of Tag.KIND."""

    STUDY = "study"
    TRIAL = "trial"


class Param:
    """MLflow param names of a trial run: the TrialConfig flattened to `section.field`
    (`orchestrator.tracking.trial_params`), plus the top-level seed/name/study/trial_id.
    These are the ones the analysis reads by name."""

    FAMILY = "model.family"
    DEPTH = "model.depth"
    BLOCK = "model.block"
    RESIDUAL = "model.residual"
    SHORTCUT = "model.shortcut"
    WIDTH = "model.width"
    SEED = "seed"
    NAME = "name"
    STUDY = "study"
    TRIAL_ID = "trial_id"


# A plain net has no shortcut: its child run logs model.shortcut = NO_SHORTCUT (the
# TrialConfig, and so trial_id, keep the config's default; stores written before log "A").
NO_SHORTCUT = "none"
# The network's size arrives with the last epoch's report but is no curve: it is logged as
# these tags of the child run, not as metrics (stores written before hold metrics).
SIZE_TAGS = {PARAMS: Tag.PARAM_COUNT, MACS: Tag.MACS}


class Result:
    """What `resweep report` writes onto the parent run, so the MLflow UI shows a study's
    answer without opening the report: the per-cell table, headline metrics and tags."""

    CELLS_TABLE = "results/cells.json"   # artifact, MLflow's table format (log_table's)
    ONSET_DEPTH = "result.onset_depth"   # metric: smallest plain-net onset depth (if any)
    RESIDUAL_GAIN = "result.residual_gain_pp"  # metric: plain - residual train error, pp,
                                               # at the deepest depth with a twin
    BEST_ERROR = "result.best_test_error"      # metric: lowest mean final test error of a cell
    CELLS = "result.cells"                     # metric: cells with finished trials
    BEST_CELL = "resweep.result.best_cell"     # tag: that cell's label
    LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # MLflow's own: marks CELLS_TABLE a table


def claim_tag(key: str) -> str:
    """The parent's verdict of a paper claim: resweep.claim.<key> (analysis.claims)."""
    return f"resweep.claim.{key}"


def ablation_tag(factor: str, value: str) -> str:
    """The parent's verdict of an ablation variant: resweep.ablation.<factor>.<value>."""
    return f"resweep.ablation.{factor}.{value}"


class Artifact:
    """Artifact paths in a run."""

    STUDY = "study.yaml"      # parent: the study file as run
    TRIAL = "trial.json"      # child: the TrialConfig
    PROBES = "probes.json"    # child: the worker's probes (workers.results.PROBES)
    ERROR = "error.txt"       # child: the failed trial's traceback
    REPORT_DIR = "report"     # parent: `resweep report`'s files


EXPERIMENT_KIND = (Tag.EXPERIMENT_KIND, "custom_model_development")
# resweep.status -> MLflow run status (parent runs use finished/failed/interrupted too).
MLFLOW_STATUS = {FINISHED: "FINISHED", STOPPED: "FINISHED", DIVERGED: "FAILED",
                 FAILED: "FAILED", INTERRUPTED: "KILLED"}


def trials_tag(status: str) -> str:
    """The parent's count of trials that ended with `status`: resweep.trials.<status>."""
    return f"resweep.trials.{status}"


def best_metric_tag(metric: str) -> str:
    """The parent's best value of the study metric: resweep.best_<metric>."""
    return f"resweep.best_{metric}"


def kind_filter(kind: str) -> str:
    """The search_runs filter for the parent (Kind.STUDY) or child (Kind.TRIAL) runs."""
    return f"tags.`{Tag.KIND}` = '{kind}'"


# ---- finding a store -------------------------------------------------------------------

def default_tracking_uri(cwd: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else the store `resweep run` creates: an SQLite database
    mlflow.db in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(cwd or Path.cwd()).resolve() / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI (None for other URIs and in-memory)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    rest = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    return None if rest in ("", ":memory:") else Path(rest)


def local_store_path(tracking_uri: str) -> Path | None:
    """Where a local store lives (SQLite file, file:// or bare directory of MLflow's file
    store); None for a tracking server."""
    if tracking_uri.startswith("sqlite:///"):
        return sqlite_path(tracking_uri)
    if tracking_uri.startswith("file://"):
        return Path(tracking_uri[len("file://"):])
    if "://" not in tracking_uri and ":" not in tracking_uri.split("/", 1)[0]:
        return Path(tracking_uri)  # a bare directory: MLflow's file store
    return None


# ---- paging ----------------------------------------------------------------------------

def search_all_runs(client, experiment_id: str, filter_string: str,
                    order_by: list[str] | None = None) -> list:
    """Every active run of the experiment matching `filter_string`, across result pages."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def list_experiments(client) -> list:
    """Every active experiment of the store, across result pages."""
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out
