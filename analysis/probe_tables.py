"""The trials' probes.json artifacts as a long table.

probes.json (written at the end of a trial) holds {"layer_responses": {layer: std},
"gradient_norms": {block: L2 norm}}, both in network order (input -> output), so the
position of a key is its layer/block index.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.runs import StudyRuns

PROBE_KINDS = ("layer_responses", "gradient_norms")


def probe_table(runs: StudyRuns) -> pd.DataFrame:
    """One row per (finished trial, probe kind, layer): run_id, cell, label, series, depth,
    residual, kind, index (0 = nearest the input), layer (name), value."""
    rows = []
    for _, trial in runs.done.iterrows():
        probes = runs.probes(trial["run_id"]) or {}
        for kind in PROBE_KINDS:
            for index, (layer, value) in enumerate((probes.get(kind) or {}).items()):
                if value is None or not math.isfinite(float(value)):
                    continue
                rows.append({"run_id": trial["run_id"], "cell": trial["cell"],
                             "label": trial["label"], "series": trial["series"],
                             "depth": trial["depth"], "residual": bool(trial["residual"]),
                             "kind": kind, "index": index, "layer": layer,
                             "value": float(value)})
    columns = ["run_id", "cell", "label", "series", "depth", "residual", "kind", "index",
               "layer", "value"]
    return pd.DataFrame(rows, columns=columns)


def mean_profile(probes: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per cell and layer index: the mean over seeds (seeds of a cell share the layers)."""
    subset = probes[probes["kind"] == kind]
    if subset.empty:
        return subset
    return (subset.groupby(["cell", "label", "series", "depth", "residual", "index"],
                           as_index=False, sort=False)["value"].mean())


def layer_response_means(probes: pd.DataFrame) -> dict[str, float]:
    """{cell: mean over layers and seeds of the layer-response std} (the Fig. 7 summary)."""
    profile = mean_profile(probes, "layer_responses")
    if profile.empty:
        return {}
    return profile.groupby("cell")["value"].mean().to_dict()
