"""The report's views of the probes: the trials' probes.json artifacts as a long table,
its summaries, and the figures of the probes (matplotlib, Agg backend; the style of
`analysis.figures`), each as PNG and SVG.

probes.json (written at the end of a trial) holds {LAYER_RESPONSES: {layer: std},
GRADIENT_NORMS: {block: L2 norm}}, both in network order (input -> output), so the
position of a key is its layer/block index.

4. layer responses (paper Fig. 7): std of each layer's response, plain vs residual.
5. gradient flow: per-block gradient norm on a log scale, plain vs residual.

Both figures read the long table `probe_table`; each `plot_*` returns None when the study
recorded no probes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.lines import Line2D

# plt: pyplot with the Agg backend and the rcParams every figure shares.
from analysis.figures import (MARKERS, FigureFile, depth_colours, integer_ticks, plt,
                              save_figure)
from analysis.runs import StudyRuns
# The kinds of probe in probes.json, as `workers.trial` writes them.
from workers.results import GRADIENT_NORMS, LAYER_RESPONSES, PROBE_KINDS


# The long table ---------------------------------------------------------------------------

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
    profile = mean_profile(probes, LAYER_RESPONSES)
    if profile.empty:
        return {}
    return profile.groupby("cell")["value"].mean().to_dict()


# 4. Layer responses ------------------------------------------------------------------------

def _profile_styles(profile: pd.DataFrame) -> dict[str, dict]:
    """Per cell label: warm colours for plain, cool for residual, darker when deeper."""
    styles = {}
    for residual, palette in ((False, "Oranges"), (True, "Blues")):
        cells = (profile[profile["residual"] == residual][["label", "depth"]]
                 .drop_duplicates().sort_values(["depth", "label"]))
        cmap = plt.get_cmap(palette)
        for i, label in enumerate(cells["label"]):
            shade = 0.5 + 0.45 * (i / max(1, len(cells) - 1))
            styles[label] = dict(color=cmap(shade), ls="-" if residual else "--")
    return styles


def plot_layer_responses(probes: pd.DataFrame, out_dir: Path) -> FigureFile | None:
    """Std of each layer's response after BN (paper Fig. 7): in network order (left) and
    sorted by magnitude (right); mean over seeds."""
    profile = mean_profile(probes, LAYER_RESPONSES)
    if profile.empty:
        return None
    styles = _profile_styles(profile)
    fig, axes = plt.subplots(1, 2, figsize=(11.2, 4.2), sharey=True)
    for label, rows in profile.groupby("label", sort=False):
        rows = rows.sort_values("index")
        axes[0].plot(rows["index"] + 1, rows["value"], lw=1.6, label=label, **styles[label])
        ranked = rows["value"].sort_values(ascending=False).to_numpy()
        axes[1].plot(range(1, len(ranked) + 1), ranked, lw=1.6, label=label, **styles[label])
    axes[0].set_xlabel("layer index (network order, input -> output)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    # A few huge responses (e.g. a deep plain net's first layers) would flatten the rest
    # on a linear axis.
    log_scale = profile["value"].max() > 5 * profile["value"].median()
    for ax in axes:
        ax.set_ylabel("std of layer response (after BN)" + (", log scale" if log_scale else ""))
        ax.grid(True, which="both" if log_scale else "major", alpha=0.3)
        if log_scale:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        integer_ticks(ax)
    axes[0].set_title("responses in network order")
    axes[1].set_title("responses sorted by magnitude")
    _legend_by_depth(axes[1], profile, styles)
    fig.suptitle("Layer responses (paper Fig. 7): std of each layer's output, plain vs "
                 "residual", y=1.02)
    return save_figure(fig, out_dir, "4-layer-responses", "Layer responses",
                 "Standard deviation of each layer's output after batch norm, before the "
                 "addition and ReLU, on a probe batch at the end of training; mean over "
                 "seeds. Plain nets dashed (orange), residual nets solid (blue).")


def _legend_by_depth(ax, profile: pd.DataFrame, styles: dict[str, dict]) -> None:
    labels = (profile[["label", "depth", "residual"]].drop_duplicates()
              .sort_values(["residual", "depth", "label"])["label"])
    ax.legend(handles=[Line2D([], [], lw=1.8, label=l, **styles[l]) for l in labels],
              frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              ncols=2 if len(labels) > 12 else 1)


# 5. Gradient flow --------------------------------------------------------------------------

def plot_gradient_flow(probes: pd.DataFrame, out_dir: Path) -> FigureFile | None:
    """Per-block weight-gradient L2 norm (log scale) against block index; plain left,
    residual right, one colour per depth; mean over seeds."""
    profile = mean_profile(probes, GRADIENT_NORMS)
    if profile.empty:
        return None
    profile = profile[profile["value"] > 0]  # log scale
    kinds = [(r, t) for r, t in ((False, "plain nets"), (True, "residual nets (ResNets)"))
             if (profile["residual"] == r).any()]
    colours = depth_colours(profile["depth"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.6 * len(kinds), 4.2), sharey=True,
                             squeeze=False)
    for ax, (residual, title) in zip(axes[0], kinds):
        part = profile[profile["residual"] == residual]
        series = sorted(part["series"].unique())
        for (label, depth, name), rows in part.groupby(["label", "depth", "series"], sort=False):
            rows = rows.sort_values("index")
            marker = MARKERS[series.index(name) % 6] if len(series) > 1 else "o"
            ax.plot(rows["index"] + 1, rows["value"], marker=marker, markersize=3, lw=1.6,
                    color=colours[int(depth)], label=label)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("block index (1 = stem, last = classifier)")
        ax.set_ylabel("weight-gradient L2 norm (log scale)")
        ax.grid(True, which="both", alpha=0.25)
        integer_ticks(ax)
        ax.legend(frameon=False, loc="best", ncols=2 if part["label"].nunique() > 6 else 1)
    fig.suptitle("Gradient flow: per-block gradient norm at the end of training", y=1.02)
    return save_figure(fig, out_dir, "5-gradient-flow", "Gradient flow",
                 "L2 norm of each block's weight gradient on a probe batch; mean over seeds. "
                 "Vanishing gradients show as norms falling towards the input (left end).")


__all__ = ["layer_response_means", "mean_profile", "plot_gradient_flow", "plot_layer_responses",
           "probe_table"]
