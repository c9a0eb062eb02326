"""A study's MLflow runs as tidy tables.

The orchestrator writes the layout of `analysis.store` (see also the MLflow conventions
in the README and ARCHITECTURE.md): experiment = study name; one parent run per `resweep
run` (tag resweep.kind=study, artifact study.yaml); one nested child run per trial (tag
resweep.kind=trial, resweep.trial_id, resweep.status, resweep.seed; params = the
flattened TrialConfig with dotted keys; per-epoch metrics of `workers.results` with step =
epoch; artifact probes.json).

`load_study_runs` reads that back with `MlflowClient` from any tracking URI into
- `trials`: one row per trial (run id, status, parsed params, final metrics, cell label),
  child runs of *every* `resweep run` of the study, de-duplicated by trial_id (a done run
  wins over an interrupted or failed one, then the newest);
- `curves`: one row per (run, epoch) with the per-epoch metrics as columns.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.store import (NO_SHORTCUT, SIZE_TAGS, Artifact, Kind, Param, Tag,
                            default_tracking_uri, kind_filter, list_experiments,
                            local_store_path, search_all_runs)
from models.config import ConfigError
from search_spaces import StudyError, load_study_text
from workers.config import NOT_HASHED_TRAIN
from workers.results import CURVE_METRICS, FINISHED, STATUS_RANK

# Flattened params that do not change what a trial computes, or that name it: a cell is
# the set of trials that differ only in these (so: the seeds of one configuration).
_NOT_CELL_PARAMS = (Param.SEED, Param.NAME, Param.STUDY, Param.TRIAL_ID,
                    *(f"train.{name}" for name in NOT_HASHED_TRAIN), "data.root", "data.download")
_NOT_CELL_PREFIXES = ("resources.",)
# Short names for the model params every figure uses ("model.depth" -> "depth").
_MODEL_COLUMNS = {p: p.split(".", 1)[1] for p in (Param.DEPTH, Param.RESIDUAL, Param.SHORTCUT,
                                                 Param.BLOCK, Param.WIDTH, Param.FAMILY)}


def resolve_study(study: str) -> tuple[str, Path | None]:
    """STUDY as given on the command line -> (study name = experiment name, study file).

    A path to a YAML file gives the study's `name` (through `search_spaces.load_study`, so
    the file is validated as `resweep run` would); anything else that does not look like a
    path is taken as the name itself."""
    path = Path(study)
    if path.is_file():
        return _study_name(path), path
    if study.endswith((".yaml", ".yml")) or "/" in study or os.sep in study:
        raise ConfigError(f"STUDY: no study file {study!r}; give a study YAML path or the "
                          "study's name (its MLflow experiment)")
    return study, None


def _study_name(path: Path) -> str:
    from search_spaces import load_study  # validates the file as `resweep run` would

    return load_study(str(path)).name


def open_store(tracking_uri: str) -> MlflowClient:
    """A client on an *existing* store. A missing SQLite file would silently be created
    (empty) by MLflow, so it is refused here with the path that was looked at."""
    local = local_store_path(tracking_uri)
    if local is not None and not local.exists():
        raise ConfigError(
            f"--tracking-uri: no MLflow store at {local} (tracking URI {tracking_uri}); "
            "run `resweep run STUDY` first, or pass the URI the study was run with")
    # Artifact downloads (probes.json per trial) would otherwise draw a progress bar each.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient(tracking_uri=tracking_uri)


def find_experiment(client: MlflowClient, study: str, tracking_uri: str):
    """The study's experiment, or a ConfigError naming the store and what is in it."""
    experiment = client.get_experiment_by_name(study)
    if experiment is None or experiment.lifecycle_stage != "active":
        names = sorted(e.name for e in list_experiments(client))
        raise ConfigError(
            f"STUDY: no experiment named {study!r} in the MLflow store {tracking_uri}; "
            f"experiments there: {names or 'none'}. Run `resweep run` on the study first, "
            "or pass --tracking-uri with the store it was run with")
    return experiment


def parse_param(text: str) -> Any:
    """MLflow stores params as strings: turn "True", "20", "0.5", "None" back into values.
    Anything else (names, lists) stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null", ""):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


@dataclass
class StudyRuns:
    """Everything the report needs about one study, read from MLflow."""

    study: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None      # latest `resweep run` of the study (None if there is none)
    parent_run_name: str | None
    parents: int                   # how many `resweep run`s the trials come from
    trials: pd.DataFrame           # one row per trial_id (see module docstring)
    curves: pd.DataFrame           # one row per (run_id, epoch)
    varying: list[str]             # cell params that take more than one value
    client: MlflowClient = field(repr=False)
    parent_tags: dict[str, str] = field(default_factory=dict)  # of the chosen parent run
    _probes: dict[str, dict | None] = field(default_factory=dict, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def design(self) -> str | None:
        """grid | ablation | search, as the parent run records it (None without one)."""
        return self.parent_tags.get(Tag.DESIGN)

    @property
    def done(self) -> pd.DataFrame:
        """Trials that ran to completion: the rows statistics are computed from."""
        return self.trials[self.trials["status"] == FINISHED]

    def probes(self, run_id: str) -> dict | None:
        """The trial's probes.json ({"layer_responses": {...}, "gradient_norms": {...}}),
        or None when it has none."""
        if run_id not in self._probes:
            self._probes[run_id] = read_json_artifact(self.client, run_id, Artifact.PROBES)
        return self._probes[run_id]

    def study_text(self) -> str | None:
        """The study YAML the latest `resweep run` logged (artifact study.yaml)."""
        if self.parent_run_id is None:
            return None
        if "study_text" not in self._cache:
            self._cache["study_text"] = read_text_artifact(self.client, self.parent_run_id,
                                                           Artifact.STUDY)
        return self._cache["study_text"]

    def study_file(self):
        """That file as a validated `search_spaces.Study` (an ablation's baseline, a
        search's metric and space), or None when it is not recorded or no longer loads
        (a file of an older resweep). Its --set overrides are not recorded."""
        text = self.study_text()
        if text is None:
            return None
        try:
            return load_study_text(text, f"study.yaml of {self.parent_run_name}")
        except (StudyError, ConfigError, ValueError):
            return None


def read_text_artifact(client: MlflowClient, run_id: str, path: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="resweep-artifact-") as tmp:
        try:
            local = client.download_artifacts(run_id, path, dst_path=tmp)
        except (MlflowException, OSError):
            return None
        return Path(local).read_text(encoding="utf-8")


def read_json_artifact(client: MlflowClient, run_id: str, path: str) -> dict | None:
    text = read_text_artifact(client, run_id, path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def load_study_runs(study: str, tracking_uri: str | None = None,
                    curve_keys: tuple[str, ...] = CURVE_METRICS,
                    parent: str | None = None) -> StudyRuns:
    """Read a study's experiment into tables (see module docstring).

    parent: run id or run name of the `resweep run` whose study file is shown and to which
    the report is logged; default the latest. The trials are those of every run."""
    tracking_uri = tracking_uri or default_tracking_uri()
    client = open_store(tracking_uri)
    experiment = find_experiment(client, study, tracking_uri)
    eid = experiment.experiment_id

    parents = search_all_runs(client, eid, kind_filter(Kind.STUDY),
                              order_by=["attributes.start_time DESC"])
    children = search_all_runs(client, eid, kind_filter(Kind.TRIAL))
    if not children:
        raise ConfigError(
            f"STUDY: experiment {study!r} in {tracking_uri} has no trial runs yet; "
            "run `resweep run` on the study first")
    kept = _deduplicate(children)
    trials = _trial_table(kept, children)
    varying = label_cells(trials)
    curves = _curve_table(client, trials, curve_keys)
    latest = parents[0] if parents else None
    if parent is not None:
        chosen = [r for r in parents if parent in (r.info.run_id, r.info.run_name)]
        if not chosen:
            names = [r.info.run_name for r in parents]
            raise ConfigError(f"--parent: got {parent!r}; the `resweep run`s of study "
                              f"{study!r} are (newest first): {names or 'none'}")
        latest = chosen[0]
    return StudyRuns(
        study=study, tracking_uri=tracking_uri, experiment_id=eid,
        parent_run_id=latest.info.run_id if latest else None,
        parent_run_name=latest.info.run_name if latest else None,
        parents=len({r.data.tags.get(Tag.PARENT_RUN_ID) for r in kept}),
        trials=trials, curves=curves, varying=varying, client=client,
        parent_tags=dict(latest.data.tags) if latest else {})


def _trial_key(run) -> str:
    return run.data.tags.get(Tag.TRIAL_ID) or run.info.run_id


def _deduplicate(children: list) -> list:
    """One run per trial_id: finished > diverged > stopped > interrupted > failed, then newest."""
    best: dict[str, Any] = {}
    for run in children:
        key = _trial_key(run)
        rank = (STATUS_RANK.get(run.data.tags.get(Tag.STATUS, ""), 9),
                -(run.info.start_time or 0))
        if key not in best or rank < best[key][0]:
            best[key] = (rank, run)
    return [run for _, run in sorted(best.values(), key=lambda item: item[1].info.start_time or 0)]


def _trial_table(kept: list, children: list) -> pd.DataFrame:
    attempts: dict[str, int] = {}
    for run in children:
        attempts[_trial_key(run)] = attempts.get(_trial_key(run), 0) + 1
    rows = []
    for run in kept:
        tags, params = run.data.tags, {k: parse_param(v) for k, v in run.data.params.items()}
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "trial_id": _trial_key(run),
            "name": tags.get(Tag.NAME, run.info.run_name),
            "status": tags.get(Tag.STATUS, "unknown"),
            "mlflow_status": run.info.status,
            "parent_run_id": tags.get(Tag.PARENT_RUN_ID),
            "start_time": run.info.start_time,
            "attempts": attempts[_trial_key(run)],
        }
        seed = params.get("seed", parse_param(tags.get(Tag.SEED, "0")))
        row["seed"] = seed
        row.update({k: v for k, v in params.items() if k != "seed"})
        for key, short in _MODEL_COLUMNS.items():
            row[short] = params.get(key)
        # Final metrics: MLflow keeps each key's value at its largest step (the last epoch;
        # for test_error the last evaluated epoch).
        row.update({key: float(value) for key, value in run.data.metrics.items()})
        # The network's size: tags since they stopped being metrics (older stores: metrics).
        for key, tag in SIZE_TAGS.items():
            if tag in tags:
                row[key] = float(tags[tag])
        if row.get("residual") is False and Param.SHORTCUT in row:
            # A plain net has no shortcut ("none" reads back as None); stores written
            # before logged the config's default "A".
            row["shortcut"] = row[Param.SHORTCUT] = NO_SHORTCUT
        row["search_params"] = tags.get(Tag.SEARCH_PARAMS)
        rows.append(row)
    table = pd.DataFrame(rows)
    if "residual" in table and table["residual"].notna().all():
        table["residual"] = table["residual"].astype(bool)
    return table


def _cell_params(table: pd.DataFrame) -> list[str]:
    return sorted(c for c in table.columns if "." in c and c not in _NOT_CELL_PARAMS
                  and not c.startswith(_NOT_CELL_PREFIXES))


def label_cells(table: pd.DataFrame) -> list[str]:
    """Add `cell` (canonical JSON of the cell's params), `label` (e.g. "plain-56",
    "resnet-56 B") and `series` (the label without the depth: one line of error vs depth).
    Returns the cell params that vary across the study."""
    params = _cell_params(table)
    table["cell"] = [json.dumps({p: _jsonable(row[p]) for p in params}, sort_keys=True)
                     for _, row in table.iterrows()]
    varying = [p for p in params if table[p].map(_jsonable).map(json.dumps).nunique() > 1]
    residual_rows = table[table["residual"] == True] if "residual" in table else table  # noqa: E712
    show_shortcut = (Param.SHORTCUT in table and
                     residual_rows[Param.SHORTCUT].nunique(dropna=True) > 1)
    extras = [p for p in varying if p not in (Param.DEPTH, Param.RESIDUAL, Param.SHORTCUT)]
    labels, series = [], []
    for _, row in table.iterrows():
        kind = "resnet" if row.get("residual") else "plain"
        parts = [kind]
        if show_shortcut and row.get("residual"):
            parts.append(str(row[Param.SHORTCUT]))
        parts += [f"{p.rsplit('.', 1)[-1]}={_short(row[p])}" for p in extras]
        series.append(" ".join(parts))
        depth = row.get("depth")
        labels.append(" ".join([f"{kind}-{depth}" if depth is not None else kind] + parts[1:]))
    table["label"] = labels
    table["series"] = series
    return varying


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _curve_table(client: MlflowClient, trials: pd.DataFrame,
                 curve_keys: tuple[str, ...]) -> pd.DataFrame:
    """Per-epoch metric history of every kept trial, one row per (run_id, epoch)."""
    points: dict[tuple[str, int], dict[str, float]] = {}
    for _, trial in trials.iterrows():
        for key in curve_keys:
            if key not in trial or pd.isna(trial[key]):
                continue  # the run never logged this metric
            for metric in client.get_metric_history(trial["run_id"], key):
                points.setdefault((trial["run_id"], metric.step), {})[key] = metric.value
    rows = [{"run_id": run_id, "epoch": epoch, **values}
            for (run_id, epoch), values in sorted(points.items())]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run_id", "epoch"])
