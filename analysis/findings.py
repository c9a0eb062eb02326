"""Findings computed from the trial table, never eyeballed from a figure.

- `aggregate`: per cell (one configuration, all its seeds) mean, std and 95% t-interval.
- `find_onset`: degradation onset, the smallest depth at which a plain net's final
  training error exceeds a shallower plain net's by more than seed noise: one-sided Welch
  t-test (alpha 0.05) when both depths have >= 2 seeds, else a stated margin (1 pp).
- `residual_gains`: plain minus residual error at each depth, with its Welch interval.
- `paper_claims`: He et al. (2015)'s claims with a verdict and the numbers behind it.

Only trials whose status is "finished" count (diverged / early-stopped / failed runs have
no comparable final error); the report lists the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from analysis.stats import Comparison, compare_greater, difference_interval, summarize
from analysis.store import Param
from workers.results import ERROR_METRICS, FINISHED  # table columns are these report keys

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


@dataclass
class Onset:
    """Where degradation starts in one series (None: nowhere in the depths tried)."""

    depth: int | None
    shallower: int | None
    comparison: Comparison | None
    test: str
    checked: list[tuple[int, int, Comparison]] = field(default_factory=list)

    def describe(self, with_test: bool = True) -> str:
        test = f" ({self.test})" if with_test else ""
        if self.depth is None:
            return f"no degradation: no deeper net is worse than a shallower one{test}"
        c = self.comparison
        p_text = f", p = {c.p_value:.2g}" if c.p_value is not None else ""
        return (f"onset at depth {self.depth}: training error {pp_diff(c.diff, c.ci)} over "
                f"depth {self.shallower}{p_text}{test}")


def describe_test(seed_counts, margin: float = MARGIN, alpha: float = ALPHA) -> str:
    """The rule `compare_greater` applies to cells with these numbers of seeds, in words."""
    seeds = sorted(set(seed_counts))
    welch = f"one-sided Welch t-test over seeds, alpha = {alpha:g}"
    single = (f"single seed, so no noise estimate: a difference above {100 * margin:g} pp "
              "counts")
    if seeds and min(seeds) >= 2:
        return welch
    if seeds and max(seeds) < 2:
        return single
    return f"{welch} where both sides have >= 2 seeds; otherwise {single}"


def find_onset(values: dict[int, list[float]], margin: float = MARGIN,
               alpha: float = ALPHA) -> Onset:
    """Smallest depth whose error exceeds some shallower depth's by more than seed noise
    (see `compare_greater`). Of several shallower depths it beats, the largest gap is
    reported."""
    depths = sorted(values)
    checked: list[tuple[int, int, Comparison]] = []
    test = describe_test([len(v) for v in values.values()], margin, alpha)
    for i, deep in enumerate(depths):
        hits = []
        for shallow in depths[:i]:
            comparison = compare_greater(values[deep], values[shallow], margin, alpha)
            checked.append((deep, shallow, comparison))
            if comparison.greater:
                hits.append((comparison.diff, shallow, comparison))
        if hits:
            _, shallow, comparison = max(hits, key=lambda hit: hit[0])
            return Onset(deep, shallow, comparison, test, checked)
    return Onset(None, None, None, test, checked)


@dataclass
class Gain:
    """Plain minus residual error of one twin pair at one depth (positive: residual better)."""

    depth: int
    plain: str
    residual: str
    n_plain: int
    n_residual: int
    train_gain: float
    train_ci: float
    test_gain: float
    test_ci: float
    train_better: Comparison
    plain_train: float = math.nan      # mean final training errors over seeds
    residual_train: float = math.nan
    series: str = ""                   # the residual cell's series ("resnet", "resnet B")


def residual_gains(done: pd.DataFrame, margin: float = MARGIN,
                   alpha: float = ALPHA) -> list[Gain]:
    """For each depth and each residual cell with a plain twin: plain minus residual final
    error (train and test), with the Welch 95% interval of the difference."""
    if done.empty or "residual" not in done:
        return []
    gains = []
    with_twin = done.assign(twin=done["cell"].map(twin_key))
    plains = with_twin[~with_twin["residual"].astype(bool)]
    residuals = with_twin[with_twin["residual"].astype(bool)]
    for res_cell, res in residuals.groupby("cell", sort=False):
        plain = plains[plains["twin"] == res["twin"].iloc[0]]
        if plain.empty:
            continue
        train_gain, train_ci = difference_interval(plain["train_error"], res["train_error"])
        test_gain, test_ci = _test_gain(plain, res)
        gains.append(Gain(
            depth=int(res["depth"].iloc[0]), plain=plain["label"].iloc[0],
            residual=res["label"].iloc[0], n_plain=len(plain), n_residual=len(res),
            train_gain=train_gain, train_ci=train_ci, test_gain=test_gain, test_ci=test_ci,
            train_better=compare_greater(plain["train_error"].tolist(),
                                         res["train_error"].tolist(), margin, alpha),
            plain_train=float(plain["train_error"].mean()),
            residual_train=float(res["train_error"].mean()), series=res["series"].iloc[0]))
    return sorted(gains, key=lambda g: (g.series, g.depth))


def _test_gain(plain: pd.DataFrame, res: pd.DataFrame) -> tuple[float, float]:
    if "test_error" not in plain or plain["test_error"].isna().all() or \
            res["test_error"].isna().all():
        return math.nan, math.nan
    return difference_interval(plain["test_error"].dropna(), res["test_error"].dropna())


@dataclass
class Claim:
    """One of the paper's claims, checked against this study."""

    claim: str
    source: str       # where in He et al. (2015)
    verdict: str      # SUPPORTED / NOT_SUPPORTED / NOT_TESTABLE
    evidence: str     # the numbers behind the verdict; " | " separates items (one a line)
    test: str         # how the verdict was decided


@dataclass
class Findings:
    aggregates: pd.DataFrame
    onsets: dict[str, Onset]          # plain series label -> onset
    residual_onsets: dict[str, Onset]  # residual series label -> onset (should be none)
    gains: list[Gain]
    claims: list[Claim]
    excluded: pd.DataFrame            # trials not counted (not finished)
    margin: float = MARGIN
    alpha: float = ALPHA


def compute_findings(trials: pd.DataFrame, layer_response_means: dict[str, float] | None = None,
                     margin: float = MARGIN, alpha: float = ALPHA) -> Findings:
    """All findings from the trial table of `analysis.runs` (finished trials only).

    layer_response_means: {cell: mean over layers and seeds of the layer-response std},
    from the probes; None or {} when the study has no probes.
    """
    done = trials[trials["status"] == FINISHED] if not trials.empty else trials
    excluded = trials[trials["status"] != FINISHED] if not trials.empty else trials
    aggregates = aggregate(done)
    onsets, residual_onsets = {}, {}
    if not done.empty and "train_error" in done:
        for _, series in done.groupby(done["cell"].map(depth_free_key), sort=False):
            values = values_by_depth(series, "train_error")
            if len(values) < 2:
                continue
            target = residual_onsets if bool(series["residual"].iloc[0]) else onsets
            target[series["series"].iloc[0]] = find_onset(values, margin, alpha)
    gains = residual_gains(done, margin, alpha) if "train_error" in done else []
    claims = [
        _claim_degradation(done, onsets, margin, alpha),
        _claim_fix(onsets, gains, margin, alpha),
        _claim_deeper_residual(done, margin),
        _claim_shortcuts(aggregates, margin),
        _claim_layer_responses(aggregates, layer_response_means or {}),
    ]
    return Findings(aggregates, onsets, residual_onsets, gains, claims, excluded, margin, alpha)


def _series_values_text(done: pd.DataFrame, series: str, metric: str = "train_error") -> str:
    values = values_by_depth(done[done["series"] == series], metric)
    parts = []
    for depth, xs in values.items():
        s = summarize(xs)
        spread = f" ± {100 * s.ci:.1f}" if not math.isnan(s.ci) else ""
        parts.append(f"{depth}: {100 * s.mean:.1f}{spread}%")
    return f"{series} ({metric.replace('_', ' ')}, n={_seed_counts(values)}): " + ", ".join(parts)


def _seed_counts(values: dict[int, list[float]]) -> str:
    counts = sorted({len(v) for v in values.values()})
    return "/".join(str(c) for c in counts)


def _claim_degradation(done: pd.DataFrame, onsets: dict[str, Onset], margin: float,
                       alpha: float) -> Claim:
    claim = "Deeper plain nets have higher training error than shallower ones (degradation)"
    source = "Fig. 1, Fig. 6 (left), Table 2"
    if not onsets:
        return Claim(claim, source, NOT_TESTABLE,
                     "needs finished plain nets at two or more depths that differ in nothing else",
                     "-")
    evidence, found = [], False
    for series, onset in onsets.items():
        evidence.append(_series_values_text(done, series) + "; " + onset.describe(False))
        found = found or onset.depth is not None
    # The rule over every plain series' seed counts, not just the first series'.
    seed_counts = [len(v) for series in onsets
                   for v in values_by_depth(done[done["series"] == series], "train_error").values()]
    test = describe_test(seed_counts, margin, alpha)
    return Claim(claim, source, SUPPORTED if found else NOT_SUPPORTED, " | ".join(evidence), test)


def _claim_fix(onsets: dict[str, Onset], gains: list[Gain], margin: float,
               alpha: float) -> Claim:
    claim = ("Residual nets train better than their plain twins where plain nets degrade "
             "(the fix)")
    source = "Fig. 6, Table 2"
    onset_depths = [o.depth for o in onsets.values() if o.depth is not None]
    if not onset_depths:
        return Claim(claim, source, NOT_TESTABLE,
                     "no degradation onset was found, so there is nothing to fix", "-")
    first = min(onset_depths)
    relevant = [g for g in gains if g.depth >= first]
    if not relevant:
        return Claim(claim, source, NOT_TESTABLE,
                     f"no residual twin at depth >= {first} (the onset)", "-")
    evidence = []
    for g in relevant:
        p_text = (f", p = {g.train_better.p_value:.2g}" if g.train_better.p_value is not None
                  else "")
        evidence.append(f"depth {g.depth}: {g.plain} {pp(g.plain_train)} vs {g.residual} "
                        f"{pp(g.residual_train)} training error, plain - residual = "
                        f"{pp_diff(g.train_gain, g.train_ci)}{p_text}")
    ok = all(g.train_better.greater for g in relevant)
    test = ("plain > residual training error at every depth >= the onset: "
            + describe_test([n for g in relevant for n in (g.n_plain, g.n_residual)],
                            margin, alpha))
    return Claim(claim, source, SUPPORTED if ok else NOT_SUPPORTED, " | ".join(evidence), test)


def _claim_deeper_residual(done: pd.DataFrame, margin: float) -> Claim:
    claim = (f"Deeper residual nets have lower or equal training error (within "
             f"{100 * margin:g} pp)")
    source = "Fig. 6 (middle), Table 6"
    residual = done[done["residual"].astype(bool)] if not done.empty else done
    evidence, worst_overall, testable = [], -math.inf, False
    for _, series in (residual.groupby(residual["cell"].map(depth_free_key), sort=False)
                      if not residual.empty else []):
        values = values_by_depth(series, "train_error")
        if len(values) < 2:
            continue
        testable = True
        means = {d: sum(v) / len(v) for d, v in values.items()}
        depths = sorted(means)
        # Largest rise of the mean training error from any depth to any deeper one.
        rise, pair = max(((means[b] - means[a], (a, b)) for i, a in enumerate(depths)
                          for b in depths[i + 1:]), key=lambda item: item[0])
        worst_overall = max(worst_overall, rise)
        label = series["series"].iloc[0]
        evidence.append(f"{_series_values_text(done, label)}; largest rise with depth "
                        f"{pp_diff(rise)} ({pair[0]} -> {pair[1]})")
    if not testable:
        return Claim(claim, source, NOT_TESTABLE,
                     "needs finished residual nets at two or more depths that differ in nothing "
                     "else", "-")
    verdict = SUPPORTED if worst_overall <= margin else NOT_SUPPORTED
    return Claim(claim, source, verdict, " | ".join(evidence),
                 f"mean training error over seeds may rise by at most {100 * margin:g} pp "
                 "from any depth to any deeper one")


def _claim_shortcuts(aggregates: pd.DataFrame, margin: float) -> Claim:
    claim = f"Shortcut options A, B and C give errors within {100 * margin:g} pp of each other"
    source = "Table 3"
    metric = "test_error_mean" if "test_error_mean" in aggregates else "train_error_mean"
    if aggregates.empty:
        return Claim(claim, source, NOT_TESTABLE, "no finished trials", "-")
    residual = aggregates[aggregates["residual"]]
    evidence, spreads = [], []
    by_options = residual["cell"].map(lambda c: cell_without(c, Param.SHORTCUT))
    for _, group in residual.groupby(by_options, sort=False):
        if group["shortcut"].nunique() < 2 or group[metric].isna().all():
            continue
        values = dict(zip(group["shortcut"], group[metric]))
        spread = max(values.values()) - min(values.values())
        spreads.append(spread)
        depth = group["depth"].iloc[0]
        evidence.append(f"depth {depth}: " + ", ".join(f"{k} {pp(v)}" for k, v in
                                                      sorted(values.items()))
                        + f" {metric.replace('_mean', '').replace('_', ' ')}, spread "
                        f"{100 * spread:.1f} pp")
    if not spreads:
        return Claim(claim, source, NOT_TESTABLE,
                     "no depth has two shortcut options trained with everything else equal", "-")
    verdict = SUPPORTED if max(spreads) <= margin else NOT_SUPPORTED
    return Claim(claim, source, verdict, " | ".join(evidence),
                 f"spread (max - min) of the mean over seeds <= {100 * margin:g} pp at each depth")


def _claim_layer_responses(aggregates: pd.DataFrame, responses: dict[str, float]) -> Claim:
    claim = "Residual nets' layer responses (std after BN) are smaller than plain nets'"
    source = "Fig. 7"
    if aggregates.empty or not responses:
        return Claim(claim, source, NOT_TESTABLE, "no layer-response probes recorded", "-")
    table = aggregates[aggregates["cell"].isin(responses)].assign(
        twin=lambda t: t["cell"].map(twin_key),
        response=lambda t: t["cell"].map(responses))
    evidence, results = [], []
    for _, group in table.groupby("twin", sort=False):
        plain = group[~group["residual"]]
        residual = group[group["residual"]]
        if plain.empty or residual.empty:
            continue
        plain_value = plain["response"].iloc[0]
        results += [value < plain_value for value in residual["response"]]
        evidence.append(f"depth {plain['depth'].iloc[0]}: {plain['label'].iloc[0]} "
                        f"{plain_value:.3f} vs " + ", ".join(
                            f"{r['label']} {r['response']:.3f}" for _, r in residual.iterrows()))
    if not results:
        return Claim(claim, source, NOT_TESTABLE,
                     "no depth has probes of both a plain and a residual net", "-")
    return Claim(claim, source, SUPPORTED if all(results) else NOT_SUPPORTED,
                 " | ".join(evidence),
                 "mean over layers (and seeds) of each layer's response std: residual < plain "
                 "at every depth")
