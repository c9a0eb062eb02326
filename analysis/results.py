"""The study's results on its parent run, so the MLflow UI shows the answer without
opening the report (`resweep report` writes them with the report, `log_results`):

- Result.CELLS_TABLE (results/cells.json): one row per cell, mean / std / 95% CI
  half-width / n of the final train, validation and test error, in MLflow's table format
  (what `MlflowClient.log_table` writes: pandas `orient="split"` JSON, listed in the
  run's mlflow.loggedArtifacts tag, so the UI's artifact view renders it as a table).
  Written as a file rather than through `log_table`, which appends to an existing table:
  a second report replaces it instead of doubling its rows.
- Headline metrics (Result.*): the plain-net onset depth, the residual gain at the
  deepest depth with a twin, the best cell's mean test error, the number of cells; tags:
  each paper claim's verdict (`claim_tag`), each ablation variant's verdict
  (`ablation_tag`), the best cell's label.

All names are defined in `analysis.store`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import pandas as pd

from analysis.ablation import ablation_effects, verdict_text
from analysis.findings import Findings
from analysis.runs import StudyRuns
from analysis.store import Result, ablation_tag, claim_tag
from workers.results import ERROR_METRICS

CELL_COLUMNS = ["label", "n", "seeds"] + [f"{m}_{s}" for m in ERROR_METRICS
                                          for s in ("mean", "std", "ci")]


def cells_table(findings: Findings) -> pd.DataFrame:
    """The per-cell table as logged: label, n, seeds and each error's mean/std/ci."""
    agg = findings.aggregates
    if agg.empty:
        return pd.DataFrame(columns=CELL_COLUMNS)
    return agg[[c for c in CELL_COLUMNS if c in agg]].reset_index(drop=True)


def headline(runs: StudyRuns, findings: Findings) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) for the parent run."""
    metrics: dict[str, float] = {Result.CELLS: float(len(findings.aggregates))}
    tags: dict[str, str] = {claim_tag(c.key): c.verdict for c in findings.claims if c.key}
    onsets = [o.depth for o in findings.onsets.values() if o.depth is not None]
    if onsets:
        metrics[Result.ONSET_DEPTH] = float(min(onsets))
    if findings.gains:
        deepest = max(findings.gains, key=lambda g: g.depth)
        metrics[Result.RESIDUAL_GAIN] = round(100 * deepest.train_gain, 2)
    agg = findings.aggregates
    if not agg.empty and "test_error_mean" in agg and agg["test_error_mean"].notna().any():
        best = agg.loc[agg["test_error_mean"].idxmin()]
        metrics[Result.BEST_ERROR] = float(best["test_error_mean"])
        tags[Result.BEST_CELL] = str(best["label"])
    if runs.design == "ablation":
        ablation = ablation_effects(runs.done, runs.study_file(), findings.margin,
                                    findings.alpha)
        for v in (ablation.variants if ablation else []):
            for factor, value in zip(v.factor.split(", "), v.value.split(", ")):
                tags[ablation_tag(factor, value)] = verdict_text(v, findings.margin)
    return {k: v for k, v in metrics.items() if not math.isnan(v)}, tags


def log_results(runs: StudyRuns, findings: Findings) -> None:
    """Write the cells table, headline metrics and tags onto the chosen parent run."""
    from mlflow.entities import Metric, RunTag

    if runs.parent_run_id is None:
        return
    client, run_id = runs.client, runs.parent_run_id
    with tempfile.TemporaryDirectory(prefix="resweep-results-") as tmp:
        path = Path(tmp) / Path(Result.CELLS_TABLE).name
        cells_table(findings).to_json(path, orient="split", index=False)
        client.log_artifact(run_id, str(path), str(Path(Result.CELLS_TABLE).parent))
    logged = json.loads(runs.client.get_run(run_id).data.tags.get(Result.LOGGED_ARTIFACTS, "[]"))
    entry = {"path": Result.CELLS_TABLE, "type": "table"}
    if entry not in logged:
        logged.append(entry)
    metrics, tags = headline(runs, findings)
    tags[Result.LOGGED_ARTIFACTS] = json.dumps(logged)
    now = int(time.time() * 1000)  # step 0; a later report's value is the latest
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])


def read_cells_table(runs: StudyRuns) -> pd.DataFrame | None:
    """The table as logged on the parent run (None when it is not there)."""
    from analysis.runs import read_text_artifact

    text = read_text_artifact(runs.client, runs.parent_run_id, Result.CELLS_TABLE)
    if text is None:
        return None
    data = json.loads(text)
    return pd.DataFrame(data["data"], columns=data["columns"])
