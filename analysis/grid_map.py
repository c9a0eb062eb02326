"""The 2-D degradation map of a grid over depth and a second factor (width, shortcut,
block, data size, ...): for each value of that factor, where plain nets start to degrade
(the onset of `analysis.findings.find_onset` on the plain nets of that row) and how much
the residual twin recovers at each depth (plain minus residual final training error).

Drawn as a heatmap of the gap over depth x factor with the onset marked per row, and as
per-row curves (plain vs residual training error against depth). A study qualifies when
its finished trials vary the depth, plain vs residual, and exactly one other cell param
(the shortcut counts only when residual nets take two or more options: a plain net has
none). `search_spaces/width.yaml` is the shipped example.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.cells import ALPHA, MARGIN, pp, pp_gap, rounded_gap, values_by_depth
from analysis.figures import FigureFile, save_figure
from analysis.findings import Onset, find_onset
from analysis.section import Section
from analysis.stats import difference_interval
from analysis.store import Param

HEATMAP_FIGURE = "7-depth-factor-map"
CURVES_FIGURE = "8-depth-factor-curves"


@dataclass
class MapRow:
    """One value of the second factor: the plain onset and the gap per depth."""

    value: object
    onset: Onset
    plain: dict[int, float]              # depth -> mean final training error
    residual: dict[int, float]
    gap: dict[int, tuple[float, float]]  # depth -> (plain - residual from the rounded
                                         # means, half-width of the Welch 95% interval)


@dataclass
class DepthFactorMap:
    factor: str                          # the cell param, e.g. "model.width"
    depths: list[int]
    rows: list[MapRow]

    @property
    def name(self) -> str:
        return self.factor.rsplit(".", 1)[-1]


def second_factor(done: pd.DataFrame) -> str | None:
    """The one cell param besides depth and residual that the finished trials vary."""
    if done.empty or "depth" not in done or done["depth"].nunique() < 2 or \
            done["residual"].nunique() < 2:
        return None
    params = pd.DataFrame([json.loads(c) for c in done["cell"].unique()])
    varied = [p for p in params.columns if p not in (Param.DEPTH, Param.RESIDUAL)
              and params[p].map(json.dumps).nunique() > 1]
    residual = params[params[Param.RESIDUAL] == True]  # noqa: E712
    if Param.SHORTCUT in varied and residual[Param.SHORTCUT].nunique() < 2:
        varied.remove(Param.SHORTCUT)  # only plain "none" vs one option
    return varied[0] if len(varied) == 1 else None


def _ordered(values) -> list:
    values = list(dict.fromkeys(values))
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def depth_factor_map(done: pd.DataFrame, margin: float = MARGIN, alpha: float = ALPHA
                     ) -> DepthFactorMap | None:
    factor = second_factor(done)
    if factor is None:
        return None
    residual_mask = done["residual"].astype(bool)
    by_shortcut = factor == Param.SHORTCUT
    values = _ordered(done.loc[residual_mask if by_shortcut else done.index, factor])
    rows = []
    for value in values:
        plain = done[~residual_mask & ((done[factor] == value) | by_shortcut)]
        res = done[residual_mask & (done[factor] == value)]
        if plain.empty or res.empty:
            continue
        plain_values = values_by_depth(plain, "train_error")
        res_values = values_by_depth(res, "train_error")
        gap = {}
        for depth in sorted(set(plain_values) & set(res_values)):
            _, ci = difference_interval(plain_values[depth], res_values[depth])
            p_mean, r_mean = np.mean(plain_values[depth]), np.mean(res_values[depth])
            gap[depth] = (rounded_gap(p_mean, r_mean), ci)
        rows.append(MapRow(value, find_onset(plain_values, margin, alpha),
                           {d: float(np.mean(v)) for d, v in plain_values.items()},
                           {d: float(np.mean(v)) for d, v in res_values.items()}, gap))
    if not rows:
        return None
    depths = sorted({d for r in rows for d in r.gap})
    return DepthFactorMap(factor, depths, rows)


def _value_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_map_section(done: pd.DataFrame, out_dir: Path, margin: float = MARGIN,
                     alpha: float = ALPHA) -> Section | None:
    """The map's table (a row per factor value) and its two figures."""
    grid = depth_factor_map(done, margin, alpha)
    if grid is None:
        return None
    header = [grid.name, "plain onset"] + [f"gap at depth {d}" for d in grid.depths]
    rows, lines = [], []
    for r in grid.rows:
        onset = f"depth {r.onset.depth}" if r.onset.depth is not None else "none"
        cells = []
        for d in grid.depths:
            if d not in r.gap:
                cells.append("n/a")
                continue
            cells.append(f"{pp(r.plain[d])} - {pp(r.residual[d])} = "
                         f"{pp_gap(r.plain[d], r.residual[d], r.gap[d][1])}")
        rows.append([_value_text(r.value), onset] + cells)
        deepest = max(r.gap)
        lines.append(f"{grid.name} = {_value_text(r.value)}: {r.onset.describe(False)}; "
                     f"residual recovery at depth {deepest}: "
                     f"{pp_gap(r.plain[deepest], r.residual[deepest])}")
    note = (f"Gap: plain minus residual mean final training error (positive: the residual "
            f"twin trains better), from the rounded means shown, ± the 95% Welch interval "
            f"(none with one seed). Onset: {grid.rows[0].onset.test}.")
    figures = [f for f in (plot_gap_heatmap(grid, out_dir), plot_row_curves(grid, out_dir))
               if f is not None]
    return Section("depth_factor_map", f"Degradation map over depth x {grid.name}", lines,
                   header, rows, note, figures)


def plot_gap_heatmap(grid: DepthFactorMap, out_dir: Path) -> FigureFile:
    """Heatmap: rows = factor values, columns = depths, colour = gap (pp); the onset
    depth of each row's plain nets boxed."""
    values = np.array([[100 * r.gap[d][0] if d in r.gap else np.nan for d in grid.depths]
                       for r in grid.rows])
    bound = max(1.0, float(np.nanmax(np.abs(values)))) if np.isfinite(values).any() else 1.0
    fig, ax = plt.subplots(figsize=(1.4 * len(grid.depths) + 2.6, 0.7 * len(grid.rows) + 1.6))
    image = ax.imshow(values, cmap="PiYG", vmin=-bound, vmax=bound, aspect="auto")
    for i, r in enumerate(grid.rows):
        for j, d in enumerate(grid.depths):
            if not math.isnan(values[i, j]):
                dark = abs(values[i, j]) > 0.6 * bound  # white on the saturated ends
                ax.text(j, i, f"{values[i, j]:+.1f}", ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
        if r.onset.depth in grid.depths:
            j = grid.depths.index(r.onset.depth)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2,
                                       edgecolor="black"))
    ax.set_xticks(range(len(grid.depths)), [str(d) for d in grid.depths])
    ax.set_yticks(range(len(grid.rows)), [_value_text(r.value) for r in grid.rows])
    ax.set_xlabel("depth")
    ax.set_ylabel(grid.name)
    ax.spines[["top", "right"]].set_visible(True)
    fig.colorbar(image, ax=ax, label="plain - residual train error (pp)")
    ax.set_title(f"Residual recovery over depth x {grid.name} (box: plain onset)")
    return save_figure(fig, out_dir, HEATMAP_FIGURE, f"Degradation map over depth x {grid.name}",
                       "Colour and number: plain minus residual mean final training error in "
                       "percentage points (positive: the residual twin is better). A black "
                       "box marks the depth where that row's plain nets start to degrade.")


def plot_row_curves(grid: DepthFactorMap, out_dir: Path) -> FigureFile:
    """One panel per factor value: plain (dashed) and residual (solid) final training
    error against depth, the onset ringed."""
    n = len(grid.rows)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n + 0.6, 3.4), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], grid.rows):
        for errors, style, label in ((r.plain, dict(color="#d95f02", ls="--", marker="o"),
                                      "plain"),
                                     (r.residual, dict(color="#1b9e77", ls="-", marker="s"),
                                      "residual")):
            depths = sorted(errors)
            ax.plot(depths, [100 * errors[d] for d in depths], lw=2, label=label, **style)
        if r.onset.depth is not None:
            ax.scatter([r.onset.depth], [100 * r.plain[r.onset.depth]], s=240,
                       facecolors="none", edgecolors="black", linewidths=1.4, zorder=5,
                       label="onset")
        ax.set_xticks(grid.depths)
        ax.set_xlabel("depth")
        ax.set_title(f"{grid.name} = {_value_text(r.value)}")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("final train error (%)")
    axes[0][0].legend(frameon=False)
    return save_figure(fig, out_dir, CURVES_FIGURE, f"Error vs depth per {grid.name}",
                       "Mean final training error over seeds; plain dashed, residual solid; "
                       "a ring marks the plain onset.")
