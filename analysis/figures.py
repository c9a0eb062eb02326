"""The report's figures of the trials' errors (matplotlib, Agg backend), each as PNG and
SVG, and the style every figure shares (`FigureFile`, colours, axes, `save_figure`).

1. training curves (paper Fig. 1/6): train error dashed, test error solid, against epoch;
   plain and residual side by side; one colour per depth.
2. degradation map: final train and test error against depth, plain vs residual, 95%
   confidence bands over seeds.
3. shortcut options A/B/C and plain (paper Table 3) as a bar chart.

Figures 4 and 5 (layer responses, gradient flow) are drawn from the probes in
`analysis.probe_views`; `analysis.report.make_figures` collects them all in order.

A figure is drawn only when the study's data supports it (two shortcut options, more
than one depth...); each `plot_*` returns None otherwise. Errors are stored as fractions
and shown in percent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.findings import Findings, depth_free_key, twin_key  # noqa: E402
from analysis.store import Param  # noqa: E402

DPI = 150
PLAIN_COLOURS = ("#d95f02", "#e7298a", "#a6761d", "#e6ab02")    # warm: plain nets
RESIDUAL_COLOURS = ("#1b9e77", "#386cb0", "#7570b3", "#66a61e")  # cool: residual nets
SHORTCUT_COLOURS = {"plain": "#d95f02", "A": "#1b9e77", "B": "#386cb0", "C": "#7570b3"}
MARKERS = ("o", "s", "^", "D", "v", "P")
MAX_MARKED_SERIES = 4      # more series than this: no per-series markers in the curves
MAX_INSIDE_LEGEND = 6      # more series than this: the legend goes beside the axes
# Figure names (files <name>.png/.svg under figures/; the report and the README read them).
DEGRADATION_MAP = "2-degradation-map"
SHORTCUTS_FIGURE = "3-shortcuts"
MAX_VALUE_LABELS = 12      # degradation map: print the means of <= 2 lines of this few points

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
                     "legend.fontsize": 8.5, "axes.spines.top": False,
                     "axes.spines.right": False, "svg.fonttype": "none"})


@dataclass(frozen=True)
class FigureFile:
    """A written figure: a short name, a title, a caption for the report and its files."""

    name: str
    title: str
    caption: str
    png: Path
    svg: Path


def depth_colours(depths) -> dict[int, tuple]:
    """One colour per depth, ordered light -> dark as depth grows (same in every panel)."""
    depths = sorted({int(d) for d in depths})
    cmap = plt.get_cmap("viridis")
    if len(depths) == 1:
        return {depths[0]: cmap(0.35)}
    return {d: cmap(0.85 - 0.75 * i / (len(depths) - 1)) for i, d in enumerate(depths)}


def save_figure(fig, out_dir: Path, name: str, title: str, caption: str) -> FigureFile:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    fig.savefig(png, dpi=DPI, bbox_inches="tight")
    fig.savefig(svg, bbox_inches="tight")
    plt.close(fig)
    return FigureFile(name, title, caption, png, svg)


def percent_axis(ax, label: str) -> None:
    ax.set_ylabel(label)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.grid(True, alpha=0.3)


def depth_unit(done: pd.DataFrame) -> str:
    """What `model.depth` counts: weighted layers (ResNets), two-layer blocks (the mlp toy)."""
    families = set(done["family"].dropna()) if "family" in done else set()
    return "blocks" if families == {"mlp"} else "layers"


def integer_ticks(ax) -> None:
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _seed_note(done: pd.DataFrame) -> str:
    counts = sorted(done.groupby("cell").size().unique())
    if not counts:
        return ""
    if counts == [1]:
        return "One seed per configuration (no confidence band)."
    return f"{'/'.join(map(str, counts))} seeds per configuration."


# 1. Training curves ------------------------------------------------------------------------

def plot_training_curves(done: pd.DataFrame, curves: pd.DataFrame, out_dir: Path
                         ) -> FigureFile | None:
    """Train error (dashed) and test error (solid) against epoch, mean over seeds; plain
    nets left, residual nets right, one colour per depth."""
    if done.empty or curves.empty or "train_error" not in curves:
        return None
    data = curves.merge(done[["run_id", "cell", "label", "series", "depth", "residual"]],
                        on="run_id")
    if data.empty or data["epoch"].nunique() < 2:
        return None
    colours = depth_colours(data["depth"])
    kinds = [(False, "plain nets"), (True, "residual nets (ResNets)")]
    kinds = [(r, t) for r, t in kinds if (data["residual"] == r).any()]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.6 * len(kinds), 4.4), sharey=True,
                             squeeze=False)
    held_out = _held_out_metric(data)
    finals, markers_used = [], {}
    for ax, (residual, title) in zip(axes[0], kinds):
        part = data[data["residual"] == residual]
        series_markers = {s: MARKERS[i % len(MARKERS)]
                          for i, s in enumerate(sorted(part["series"].unique()))}
        # A marker per series (e.g. shortcut A/B/C) while few; a search study's dozens of
        # configurations are told apart by depth colour only.
        many_series = 1 < len(series_markers) <= MAX_MARKED_SERIES
        for (label, depth, series), cell in part.groupby(["label", "depth", "series"],
                                                         sort=False):
            keys = [k for k in ("train_error", held_out, "test_error") if k in cell]
            mean = cell.groupby("epoch")[list(dict.fromkeys(keys))].mean().sort_index()
            marker = series_markers[series] if many_series else None
            style = dict(color=colours[int(depth)], markersize=3.5,
                         markevery=max(1, len(mean) // 8))
            ax.plot(mean.index, 100 * mean["train_error"], "--", lw=1.4, marker=marker, **style)
            finals.append(mean["train_error"].dropna().iloc[-1])
            solid = mean[held_out].dropna() if held_out in mean else mean.iloc[:0, 0]
            if not solid.empty:
                ax.plot(solid.index, 100 * solid, "-", lw=1.8, marker=marker, **style)
                finals.append(solid.iloc[-1])
            if held_out != "test_error" and "test_error" in mean:
                # Test error evaluated only now and then (eval_every): its points, starred.
                test = mean["test_error"].dropna()
                ax.plot(test.index, 100 * test, ls="", marker="*", markersize=9,
                        color=colours[int(depth)], markeredgecolor="white", markeredgewidth=0.5)
                finals += test.tolist()
        ax.set_title(title)
        ax.set_xlabel("epoch")
        integer_ticks(ax)
        percent_axis(ax, "error (%)")
        markers_used.update(series_markers if many_series else {})
    # One legend for both panels, under them: it never hides a curve.
    unit = depth_unit(done)
    handles = [Line2D([], [], color=colours[int(d)], lw=2, label=f"{d} {unit}")
               for d in sorted(data["depth"].unique())]
    handles += [Line2D([], [], color="0.3", ls="--", lw=1.4, label="training error"),
                Line2D([], [], color="0.3", ls="-", lw=1.8,
                       label=held_out.replace("_", " ").replace("val ", "validation "))]
    if held_out != "test_error" and "test_error" in data and data["test_error"].notna().any():
        handles.append(Line2D([], [], color="0.3", ls="", marker="*", markersize=9,
                              label="test error"))
    handles += [Line2D([], [], color="0.3", marker=m, ls="", label=s)
                for s, m in markers_used.items()]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncols=min(len(handles), 8), frameon=False)
    # Like the paper's Fig. 1, zoom on the end of training: the first epochs' high errors
    # would squash the differences that matter.
    top = min(100.0, 100 * max(finals) * 2.2 + 2) if finals else 100.0
    axes[0][0].set_ylim(0, top)
    error_keys = [k for k in ("train_error", "val_error", "test_error") if k in data]
    highest = 100 * data[error_keys].max().max()
    clipped = (f" The error axis stops at {top:.0f}% to show the end of training: values "
               f"above it (up to {highest:.0f}%, the first epochs) are cut off."
               if highest > top else "")
    solid_name = "test error" if held_out == "test_error" else "validation error"
    fig.suptitle(f"Training curves: training error (dashed) and {solid_name} (solid)", y=1.02)
    note = ("" if held_out == "test_error" else
            " The test set was evaluated only at some epochs (stars); the solid lines show "
            "the validation error, measured every epoch.")
    return save_figure(fig, out_dir, "1-training-curves", "Training curves",
                 "Errors at the end of each epoch, mean over seeds." + note + clipped + " "
                 + _seed_note(done))


def _held_out_metric(data: pd.DataFrame) -> str:
    """test_error when it was measured at most epochs, else val_error (every epoch)."""
    epochs = data["epoch"].nunique()
    test_epochs = data.dropna(subset=["test_error"])["epoch"].nunique() \
        if "test_error" in data else 0
    if test_epochs >= max(2, epochs // 2) or "val_error" not in data or \
            data["val_error"].notna().sum() == 0:
        return "test_error"
    return "val_error"


# 2. Degradation map ------------------------------------------------------------------------

def _series_styles(aggregates: pd.DataFrame) -> dict[str, dict]:
    plain = [s for s in aggregates[~aggregates["residual"]]["series"].unique()]
    residual = [s for s in aggregates[aggregates["residual"]]["series"].unique()]
    styles = {}
    for i, s in enumerate(plain):
        styles[s] = dict(color=PLAIN_COLOURS[i % 4], marker=MARKERS[i % 6], ls="--")
    for i, s in enumerate(residual):
        styles[s] = dict(color=RESIDUAL_COLOURS[i % 4], marker=MARKERS[(i + 1) % 6], ls="-")
    return styles


def plot_degradation_map(done: pd.DataFrame, findings: Findings, out_dir: Path
                         ) -> FigureFile | None:
    """Final train (left) and test (right) error against depth, one line per series (plain
    / residual ...), 95% t-interval bands over seeds, seeds as dots, onset marked."""
    agg = findings.aggregates
    if agg.empty or agg["depth"].nunique() < 2:
        return None
    lines = agg.groupby(agg["cell"].map(depth_free_key))["depth"].nunique()
    if lines.max() < 2:
        return None  # no configuration was trained at two depths (e.g. a random search)
    metrics = [m for m in ("train_error", "test_error") if f"{m}_mean" in agg
               and agg[f"{m}_mean"].notna().any()]
    styles = _series_styles(agg)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.4),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for series, rows in agg.groupby(agg["cell"].map(depth_free_key), sort=False):
            rows = rows.sort_values("depth")
            name = rows["series"].iloc[0]
            style = styles[name]
            mean, ci = 100 * rows[f"{metric}_mean"], 100 * rows[f"{metric}_ci"]
            ax.plot(rows["depth"], mean, lw=2, markersize=6, label=name, **style)
            if ci.notna().any():
                ax.fill_between(rows["depth"], mean - ci.fillna(0), mean + ci.fillna(0),
                                color=style["color"], alpha=0.18, lw=0)
            if len(styles) <= 2 and len(agg) <= MAX_VALUE_LABELS:  # few points: values
                for x, y in zip(rows["depth"], mean):
                    ax.annotate(f"{y:.1f}%", (x, y), xytext=(7, -3), textcoords="offset points",
                                fontsize=8, color=style["color"], va="top", zorder=6,
                                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none",
                                          alpha=0.85))
            seeds = done[done["cell"].isin(rows["cell"])]
            ax.scatter(seeds["depth"], 100 * seeds[metric], s=10, color=style["color"],
                       alpha=0.45, zorder=3)
        ax.margins(x=0.08, y=0.12)  # room for the value labels
        ax.set_xticks(sorted(agg["depth"].unique()))
        ax.set_xlabel("depth (two-layer blocks)" if depth_unit(done) == "blocks"
                      else "depth (weighted layers)")
        percent_axis(ax, f"final {metric.replace('_', ' ')} (%)")
        ax.set_title(f"final {metric.replace('_', ' ')} vs depth")
        if metric == "train_error":
            _mark_onsets(ax, agg, findings)
        if len(styles) <= MAX_INSIDE_LEGEND:
            ax.legend(frameon=False, loc="upper left")
    if len(styles) > MAX_INSIDE_LEGEND:
        axes[0][-1].legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                           fontsize=7.5)
    fig.suptitle("Degradation map: error against depth, plain vs residual", y=1.02)
    return save_figure(fig, out_dir, DEGRADATION_MAP, "Degradation map",
                 "Lines: mean over seeds; bands: 95% t-interval; dots: single seeds. "
                 "Plain nets dashed (warm colours), residual nets solid (cool colours). "
                 + _seed_note(done))


def _mark_onsets(ax, agg: pd.DataFrame, findings: Findings) -> None:
    """Ring the point where each plain series starts to degrade (see findings.find_onset)."""
    points = []
    for series, onset in findings.onsets.items():
        row = agg[(agg["series"] == series) & (agg["depth"] == onset.depth)]
        if onset.depth is not None and not row.empty:
            points.append((onset.depth, 100 * row["train_error_mean"].iloc[0]))
    if points:
        xs, ys = zip(*points)
        ax.scatter(xs, ys, s=260, facecolors="none", edgecolors="black", linewidths=1.4,
                   zorder=5, label="degradation onset")


# 3. Shortcut options -----------------------------------------------------------------------

def shortcut_table(aggregates: pd.DataFrame) -> pd.DataFrame:
    """Rows: plain, A, B, C of each group of twin cells (same depth and every other param,
    differing only in shortcut / residual) in which at least two shortcut options were
    trained: group, depth, option, n, mean and interval of the final errors. Empty when no
    group has two options."""
    if aggregates.empty:
        return pd.DataFrame()
    agg = aggregates.assign(twin=aggregates["cell"].map(twin_key))
    kept = [twin for twin, g in agg.groupby("twin", sort=False)
            if g[g["residual"]]["shortcut"].nunique() >= 2]
    if not kept:
        return pd.DataFrame()
    rows = agg[agg["twin"].isin(kept)].copy()
    rows["option"] = [s if r else "plain" for s, r in zip(rows["shortcut"], rows["residual"])]
    rows["group"] = rows["twin"].map(_group_labels(kept))
    keep = ["group", "depth", "option", "n", "train_error_mean", "train_error_ci"]
    if "test_error_mean" in rows:
        keep += ["test_error_mean", "test_error_ci"]
    order = {"plain": 0, "A": 1, "B": 2, "C": 3}
    return (rows[keep].sort_values(["depth", "group", "option"],
                                   key=lambda c: c.map(order) if c.name == "option" else c)
            .reset_index(drop=True))


def _group_labels(twins: list[str]) -> dict[str, str]:
    """"20 layers", plus the params that tell groups of the same depth apart."""
    params = {t: json.loads(t) for t in twins}
    keys = sorted({k for p in params.values() for k in p} - {Param.DEPTH})
    varying = [k for k in keys if len({json.dumps(p.get(k)) for p in params.values()}) > 1]
    labels = {}
    for twin, p in params.items():
        extras = ", ".join(f"{k.rsplit('.', 1)[-1]}={p.get(k)}" for k in varying)
        labels[twin] = f"{p.get('model.depth')} layers" + (f"\n{extras}" if extras else "")
    return labels


def plot_shortcuts(aggregates: pd.DataFrame, out_dir: Path) -> FigureFile | None:
    """Grouped bars per depth (group of twin cells): plain, A, B, C; mean error with 95%
    interval whiskers."""
    table = shortcut_table(aggregates)
    if table.empty:
        return None
    metrics = [m for m in ("train_error", "test_error") if f"{m}_mean" in table]
    options = [o for o in ("plain", "A", "B", "C") if o in set(table["option"])]
    groups = list(dict.fromkeys(table["group"]))
    width = 0.8 / len(options)
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5.2, 1.6 * len(groups) + 2)
                                                       * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, option in enumerate(options):
            rows = table[table["option"] == option].set_index("group").reindex(groups)
            xs = [j + (i - (len(options) - 1) / 2) * width for j in range(len(groups))]
            ci = (100 * rows[f"{metric}_ci"]).fillna(0)
            bars = ax.bar(xs, 100 * rows[f"{metric}_mean"], width * 0.92, yerr=ci,
                          capsize=3, color=SHORTCUT_COLOURS[option],
                          label="plain (no shortcut)" if option == "plain" else f"option {option}")
            ax.bar_label(bars, fmt="%.1f", fontsize=7.5, padding=2)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlabel("depth")
        percent_axis(ax, f"final {metric.replace('_', ' ')} (%)")
        ax.set_title(f"final {metric.replace('_', ' ')} by shortcut option")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, loc="upper center", ncols=len(options),
               bbox_to_anchor=(0.5, 1.0))
    fig.suptitle("Shortcut options (paper Table 3): A zero-padded identity, B projection where "
                 "the shape changes, C projection everywhere", y=1.07, fontsize=10)
    return save_figure(fig, out_dir, SHORTCUTS_FIGURE, "Shortcut options A/B/C",
                 "Bars: mean over seeds; whiskers: 95% t-interval. Numbers in percent.")


__all__ = ["FigureFile", "plot_training_curves", "plot_degradation_map", "plot_shortcuts",
           "shortcut_table", "save_figure", "depth_colours", "depth_unit", "percent_axis",
           "integer_ticks", "MARKERS"]
