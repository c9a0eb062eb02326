"""The trial table's cells and the report's number formats, shared by every view.

A cell is one configuration (canonical JSON of its params, `analysis.runs.label_cells`)
with all its seeds. Here: the margin and significance level, the verdict words, the
percent formats (a gap is printed as the difference of the rounded numbers printed beside
it, so "24.1% vs 15.4%" stands next to "+8.7 pp", never "+8.8 pp"), the keys that group
cells (twins, series), the per-cell aggregate and the rule `compare_greater` applies.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from analysis.stats import summarize
from analysis.store import Param
from workers.results import ERROR_METRICS  # table columns are these report keys

# Errors are fractions; the margin is 1 percentage point. It is the paper's own scale of
# "no real difference" (Table 3: options A/B/C within 0.84 pp top-1).
MARGIN = 0.01
ALPHA = 0.05
SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable"


def pp(fraction: float) -> str:
    """A fraction as percent with one decimal ("12.3%")."""
    return "n/a" if fraction is None or math.isnan(fraction) else f"{100 * fraction:.1f}%"


def pp_diff(fraction: float, ci: float = math.nan) -> str:
    """A difference of fractions in percentage points, with its interval when known."""
    text = f"{100 * fraction:+.1f} pp"
    return text if math.isnan(ci) else f"{text} ± {100 * ci:.1f}"


def rounded_gap(a: float, b: float) -> float:
    """a - b as the difference of the two values rounded as `pp` prints them (a fraction):
    the gap a reader computes from the printed numbers."""
    return (round(100 * a, 1) - round(100 * b, 1)) / 100


def pp_gap(a: float, b: float, ci: float = math.nan) -> str:
    """`pp_diff` of a - b computed from the rounded values (see `rounded_gap`)."""
    return pp_diff(rounded_gap(a, b), ci)


def cell_without(cell: str, *keys: str) -> str:
    """The cell (canonical JSON of its params) with `keys` left out: cells that differ only
    in those keys share it."""
    params = json.loads(cell)
    for key in keys:
        params.pop(key, None)
    return json.dumps(params, sort_keys=True)


def twin_key(cell: str) -> str:
    """The cell without residual/shortcut: a plain net and its residual twins share it."""
    return cell_without(cell, Param.RESIDUAL, Param.SHORTCUT)


def depth_free_key(cell: str) -> str:
    """The cell without the depth: the cells of one line in an error-vs-depth plot."""
    return cell_without(cell, Param.DEPTH)


def aggregate(trials: pd.DataFrame, metrics: tuple[str, ...] = ERROR_METRICS) -> pd.DataFrame:
    """One row per cell: label, series, depth, residual, shortcut, n (seeds) and for each
    metric <m>_mean, <m>_std, <m>_ci (half-width of the 95% t-interval; NaN for one seed)."""
    rows = []
    for cell, group in trials.groupby("cell", sort=False):
        first = group.iloc[0]
        row = {"cell": cell, "label": first["label"], "series": first["series"],
               "depth": first.get("depth"), "residual": bool(first.get("residual")),
               "shortcut": first.get("shortcut"), "n": len(group),
               "seeds": ",".join(str(s) for s in sorted(group["seed"]))}
        for metric in metrics:
            if metric in group:
                s = summarize(group[metric].tolist())
                row.update({f"{metric}_mean": s.mean, f"{metric}_std": s.std,
                            f"{metric}_ci": s.ci, f"{metric}_n": s.n})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(["residual", "series", "depth"], kind="stable").reset_index(drop=True)


def values_by_depth(trials: pd.DataFrame, metric: str) -> dict[int, list[float]]:
    """{depth: [metric of each seed]} for one series (a plain or a residual line)."""
    out: dict[int, list[float]] = {}
    for depth, group in trials.groupby("depth"):
        values = [v for v in group[metric].tolist() if v is not None and not math.isnan(v)]
        if values:
            out[int(depth)] = values
    return dict(sorted(out.items()))


def describe_test(seed_counts, margin: float = MARGIN, alpha: float = ALPHA,
                  holm: bool = False) -> str:
    """The rule `compare_greater` applies to cells with these numbers of seeds, in words;
    holm: the p-values of the family of depth pairs are Holm-adjusted (`find_onset`)."""
    seeds = sorted(set(seed_counts))
    welch = f"one-sided Welch t-test over seeds, alpha = {alpha:g}"
    if holm:
        welch += ", Holm-corrected over the depth pairs of each series"
    single = (f"single seed, so no noise estimate: a difference above {100 * margin:g} pp "
              "counts")
    if seeds and min(seeds) >= 2:
        return welch
    if seeds and max(seeds) < 2:
        return single
    return f"{welch} where both sides have >= 2 seeds; otherwise {single}"
