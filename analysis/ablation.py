"""The ablation view (`design: ablation`): every variant against the baseline.

One row per variant cell: the factor and value it changes, its mean final train and test
error over seeds, the difference to the baseline with the 95% Welch interval, and a
verdict. The verdict uses the test error (train error when no test error was measured):

- worse / better: the variant's error is higher / lower than the baseline's by more than
  the margin (1 pp) and, where both sides have >= 2 seeds, by more than seed noise: the
  two-sided Welch test, its p-values Holm-adjusted over the variants, below alpha 0.05;
- no difference: otherwise ("within noise" or "within the margin", whichever decided).

The baseline is the study file's `baseline` (the parent run's study.yaml); a store without
it falls back to the cell closest to all others (ties: the one started first). A plain net
has no shortcut, so `residual: false` is one factor, not two. For the shipped
`shortcuts.yaml` the table reads as the paper's Table 3 (plain, A, B, C at one depth).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.cells import ALPHA, MARGIN, pp, pp_gap, rounded_gap
from analysis.figures import FigureFile, save_figure
from analysis.section import Section
from analysis.stats import holm, welch_two_sided
from analysis.store import Param

ABLATION_FIGURE = "6-ablation-effects"
BETTER, WORSE, SAME = "better", "worse", "no difference"


@dataclass
class Variant:
    """One variant cell against the baseline (differences: variant minus baseline)."""

    label: str
    factor: str
    baseline_value: str
    value: str
    n: int
    train: float
    test: float
    train_diff: float
    train_ci: float
    test_diff: float
    test_ci: float
    p_value: float | None       # two-sided Welch on the verdict metric
    p_adjusted: float | None    # Holm over the variants
    verdict: str
    reason: str                 # "noise" | "margin": what decided


@dataclass
class Ablation:
    baseline: str               # the baseline cell's label
    baseline_n: int
    baseline_train: float
    baseline_test: float
    metric: str                 # the verdict's metric: test_error (or train_error)
    variants: list[Variant]


def effective_params(cell: str) -> dict:
    """A cell's params as they describe the network: a plain net has no shortcut."""
    params = json.loads(cell)
    if params.get(Param.RESIDUAL) is False:
        params.pop(Param.SHORTCUT, None)
    return params


def _changes(base: dict, other: dict) -> list[tuple[str, object, object]]:
    keys = sorted(k for k in set(base) & set(other) if base[k] != other[k])
    return [(k, base[k], other[k]) for k in keys]


def find_baseline(done: pd.DataFrame, study=None) -> str | None:
    """The baseline cell: the study file's `baseline`, else the most central cell."""
    cells = list(dict.fromkeys(done.sort_values("start_time")["cell"]))
    if not cells:
        return None
    if study is not None and getattr(study.spec, "baseline", None):
        wanted = {study.keys[name].dotted: value for name, value in study.spec.baseline.items()
                  if name in study.keys}
        for cell in cells:
            params = json.loads(cell)
            if all(_same(params.get(key), value) for key, value in wanted.items()):
                return cell
    distance = {c: sum(len(_changes(effective_params(c), effective_params(o))) for o in cells)
                for c in cells}
    return min(cells, key=lambda c: distance[c])  # stable: the first started wins ties


def _same(a, b) -> bool:
    return a == b or str(a).lower() == str(b).lower()


def _short(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def ablation_effects(done: pd.DataFrame, study=None, margin: float = MARGIN,
                     alpha: float = ALPHA) -> Ablation | None:
    """The ablation table of the finished trials (None with fewer than two cells)."""
    if done.empty or done["cell"].nunique() < 2 or "train_error" not in done:
        return None
    base_cell = find_baseline(done, study)
    base = done[done["cell"] == base_cell]
    has_test = "test_error" in done and done["test_error"].notna().all()
    metric = "test_error" if has_test else "train_error"
    rows = []
    for cell, group in done.groupby("cell", sort=False):
        if cell == base_cell:
            continue
        changes = _changes(effective_params(base_cell), effective_params(cell))
        factor = ", ".join(k.rsplit(".", 1)[-1] for k, _, _ in changes) or "(none)"
        train_diff, train_ci, p_train = welch_two_sided(group["train_error"], base["train_error"])
        test_diff, test_ci, p_test = (welch_two_sided(group["test_error"], base["test_error"])
                                      if has_test else (math.nan, math.nan, None))
        rows.append(dict(
            label=group["label"].iloc[0], factor=factor,
            baseline_value=", ".join(_short(b) for _, b, _ in changes),
            value=", ".join(_short(v) for _, _, v in changes), n=len(group),
            train=float(group["train_error"].mean()),
            test=float(group["test_error"].mean()) if has_test else math.nan,
            train_diff=train_diff, train_ci=train_ci, test_diff=test_diff, test_ci=test_ci,
            p_value=p_test if has_test else p_train))
    with_p = [i for i, r in enumerate(rows) if r["p_value"] is not None]
    adjusted = dict(zip(with_p, holm([rows[i]["p_value"] for i in with_p])))
    base_value = float(base[metric].mean())
    variants = []
    for i, r in enumerate(rows):
        # The verdict compares the printed (rounded) means, as the table shows them.
        diff = rounded_gap(r["test"] if has_test else r["train"], base_value)
        p_adj = adjusted.get(i)
        beyond_margin = abs(diff) > margin
        noisy = p_adj is not None and p_adj >= alpha
        verdict = (WORSE if diff > 0 else BETTER) if beyond_margin and not noisy else SAME
        reason = "noise" if beyond_margin and noisy else "margin"
        variants.append(Variant(**r, p_adjusted=p_adj, verdict=verdict, reason=reason))
    variants.sort(key=lambda v: (v.factor, v.value))
    return Ablation(base["label"].iloc[0], len(base), float(base["train_error"].mean()),
                    float(base["test_error"].mean()) if has_test else math.nan, metric,
                    variants)


def verdict_text(v: Variant, margin: float = MARGIN) -> str:
    if v.verdict != SAME:
        return v.verdict
    return ("no difference (within noise)" if v.reason == "noise"
            else f"no difference (within {100 * margin:g} pp)")


def ablation_section(done: pd.DataFrame, study, out_dir: Path, margin: float = MARGIN,
                     alpha: float = ALPHA) -> Section | None:
    """The ablation table and its forest plot."""
    ablation = ablation_effects(done, study, margin, alpha)
    if ablation is None:
        return None
    rows = [["baseline", ablation.baseline, str(ablation.baseline_n),
             pp(ablation.baseline_train), pp(ablation.baseline_test), "-", "-", "-", "-"]]
    lines = []
    on_test = ablation.metric == "test_error"
    for v in ablation.variants:
        change = f"{v.factor}: {v.baseline_value} -> {v.value}"
        rows.append([change, v.label, str(v.n), pp(v.train), pp(v.test),
                     pp_gap(v.train, ablation.baseline_train, v.train_ci),
                     pp_gap(v.test, ablation.baseline_test, v.test_ci) if on_test else "n/a",
                     "-" if v.p_adjusted is None else f"{v.p_adjusted:.2g}",
                     verdict_text(v, margin)])
        ours, theirs = (v.test, ablation.baseline_test) if on_test else \
            (v.train, ablation.baseline_train)
        lines.append(f"{change}: {verdict_text(v, margin)} ({ablation.metric.replace('_', ' ')} "
                     f"{pp(ours)} vs {pp(theirs)}, {pp_gap(ours, theirs)})")
    metric = ablation.metric.replace("_", " ")
    note = (f"Differences: variant minus baseline in percentage points, from the rounded means "
            f"shown; ± the 95% Welch t-interval (none with one seed). Verdict on the final "
            f"{metric}: better/worse = beyond {100 * margin:g} pp and, with >= 2 seeds on both "
            f"sides, a two-sided Welch test with Holm-adjusted p < {alpha:g} over the "
            f"{len(ablation.variants)} variants; otherwise no difference.")
    figure = plot_ablation(ablation, out_dir, margin)
    return Section("ablation", f"Ablation: each variant against the baseline "
                   f"({ablation.baseline})", lines,
                   ["change", "cell", "seeds", "final train error", "final test error",
                    "train diff", "test diff", "p (Holm)", "verdict"], rows, note,
                   [figure] if figure else [])


def plot_ablation(ablation: Ablation, out_dir: Path, margin: float = MARGIN
                  ) -> FigureFile | None:
    """Forest plot: each variant's difference to the baseline (pp) with its 95% interval,
    train (left) and test (right); the band is +- the margin."""
    panels = [("train", "train_diff", "train_ci")]
    if any(not math.isnan(v.test_diff) for v in ablation.variants):
        panels.append(("test", "test_diff", "test_ci"))
    variants = ablation.variants
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels),
                                                      1.2 + 0.5 * len(variants)),
                             sharey=True, squeeze=False)
    ys = list(range(len(variants)))[::-1]
    colours = {BETTER: "#1b9e77", WORSE: "#d95f02", SAME: "0.35"}
    for ax, (name, diff, ci) in zip(axes[0], panels):
        ax.axvspan(-100 * margin, 100 * margin, color="0.9", lw=0, zorder=0)
        ax.axvline(0, color="0.3", lw=1)
        for y, v in zip(ys, variants):
            d, c = 100 * getattr(v, diff), 100 * getattr(v, ci)
            ax.errorbar(d, y, xerr=None if math.isnan(c) else c, fmt="o", capsize=4,
                        color=colours[v.verdict], markersize=6)
        ax.set_yticks(ys, [f"{v.factor}: {v.value}" for v in variants])
        ax.set_xlabel(f"final {name} error: variant - baseline (pp)")
        ax.set_title(f"{name} error vs baseline {ablation.baseline}")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Ablation effects (95% Welch intervals; grey band: ± margin)", y=1.02)
    return save_figure(fig, out_dir, ABLATION_FIGURE, "Ablation effects",
                       "Each variant's difference to the baseline with its 95% Welch "
                       f"interval (none with one seed); grey band ±{100 * margin:g} pp. "
                       "Green: better, orange: worse, grey: no difference.")
