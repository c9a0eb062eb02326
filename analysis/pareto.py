"""Pareto fronts of any design: final error against the network's parameters, its MACs
per image and the measured training time (the last `elapsed_s` a trial logged).

A finished trial is on the front of a cost when no other finished trial has lower or
equal error and lower or equal cost with one of the two strictly lower (non-dominated);
"all" means non-dominated in error, parameters, MACs and time together. The error is the
final test error when every finished trial measured it, else the validation error, else
the training error. Trials without a recorded size (stores before sizes were logged, or a
trial that never finished) are left out and counted.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.cells import pp
from analysis.figures import FigureFile, save_figure
from analysis.section import Section
from workers.results import MACS, PARAMS

PARETO_FIGURE = "12-pareto-fronts"
COSTS = {PARAMS: "parameters", MACS: "MACs per image", "elapsed_s": "training time (s)"}
SHORT = {PARAMS: "parameters", MACS: "MACs", "elapsed_s": "time"}


def non_dominated(points: list[tuple[float, ...]]) -> list[bool]:
    """For each point (all coordinates minimised): whether no other point dominates it."""
    def dominates(a, b) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
    return [not any(dominates(q, p) for q in points if q is not p) for p in points]


def error_metric(done: pd.DataFrame) -> str | None:
    for metric in ("test_error", "val_error", "train_error"):
        if metric in done and done[metric].notna().all():
            return metric
    return None


def pareto_table(done: pd.DataFrame) -> tuple[pd.DataFrame, str | None, int]:
    """Finished trials with error and costs, a bool column per cost ("front_<cost>") and
    "front_all"; the error metric used; how many trials had no recorded cost."""
    metric = error_metric(done)
    costs = [c for c in COSTS if c in done]
    if metric is None or not costs or done.empty:
        return pd.DataFrame(), metric, 0
    table = done.dropna(subset=costs)[["name", "run_id", "label", metric, *costs]].copy()
    skipped = len(done) - len(table)
    for cost in costs:
        table[f"front_{cost}"] = non_dominated(list(zip(table[metric], table[cost])))
    table["front_all"] = non_dominated(list(zip(table[metric], *(table[c] for c in costs))))
    return table.reset_index(drop=True), metric, skipped


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def pareto_section(done: pd.DataFrame, out_dir: Path) -> Section | None:
    table, metric, skipped = pareto_table(done)
    if table.empty or len(table) < 2:
        return None
    costs = [c for c in COSTS if c in table]
    lines = []
    for cost in costs:
        front = table[table[f"front_{cost}"]].sort_values(cost)
        lines.append(f"{metric.replace('_', ' ')} vs {COSTS[cost]}: {len(front)} of "
                     f"{len(table)} trials not dominated: " + ", ".join(front["name"]))
    if skipped:
        lines.append(f"{skipped} finished trial(s) without a recorded size or time left out")
    shown = table[table[[f"front_{c}" for c in costs] + ["front_all"]].any(axis=1)]
    rows = [[t["name"], pp(t[metric]), _count(t[PARAMS]) if PARAMS in t else "",
             _count(t[MACS]) if MACS in t else "",
             f"{t['elapsed_s']:.1f}" if "elapsed_s" in t else "",
             ", ".join(SHORT[c] for c in costs if t[f"front_{c}"]) or "-",
             "yes" if t["front_all"] else "no"]
            for _, t in shown.sort_values(metric).iterrows()]
    note = (f"Finished trials only; lower is better in every column. A trial is on a cost's "
            f"front when no other has both lower-or-equal {metric.replace('_', ' ')} and "
            "lower-or-equal cost (one strictly); 'all': non-dominated in error, parameters, "
            "MACs and time together. Listed: trials on at least one front.")
    figure = plot_pareto(table, metric, costs, out_dir)
    return Section("pareto", "Pareto fronts: error against size and training time", lines,
                   ["trial", f"final {metric.replace('_', ' ')}", "parameters", "MACs",
                    "training time (s)", "on the front of", "non-dominated overall"],
                   rows, note, [figure])


def plot_pareto(table: pd.DataFrame, metric: str, costs: list[str], out_dir: Path
                ) -> FigureFile:
    fig, axes = plt.subplots(1, len(costs), figsize=(4.4 * len(costs), 3.8), sharey=True,
                             squeeze=False)
    for ax, cost in zip(axes[0], costs):
        front = table[table[f"front_{cost}"]].sort_values(cost)
        ax.scatter(table[cost], 100 * table[metric], color="0.6", s=18, label="trial")
        ax.step(front[cost], 100 * front[metric], where="post", color="#d95f02", lw=1.6)
        ax.scatter(front[cost], 100 * front[metric], color="#d95f02", s=30, zorder=3,
                   label="non-dominated")
        if cost != "elapsed_s" and table[cost].min() > 0 and \
                table[cost].max() / table[cost].min() > 10:
            ax.set_xscale("log")
        ax.set_xlabel(COSTS[cost])
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"final {metric.replace('_', ' ')} (%)")
    axes[0][0].legend(frameon=False)
    fig.suptitle("Pareto fronts (finished trials; orange: not dominated)", y=1.02)
    return save_figure(fig, out_dir, PARETO_FIGURE, "Pareto fronts",
                       f"Final {metric.replace('_', ' ')} of each finished trial against its "
                       "parameters, MACs and measured training time; orange: the trials no "
                       "other trial beats on both axes.")


__all__ = ["non_dominated", "pareto_table", "pareto_section"]
