"""Findings computed from the trial table, never eyeballed from a figure.

- `aggregate` (`analysis.cells`): per cell (one configuration, all its seeds) mean, std
  and 95% t-interval.
- `find_onset`: degradation onset, the smallest depth at which a net's final training
  error exceeds a shallower one's (same series) by more than seed noise: one-sided Welch
  t-test at alpha 0.05 when both depths have >= 2 seeds, the p-values Holm-adjusted over
  all depth pairs of the series (several pairs are compared: without a correction the
  chance of a false onset grows with the number of depths); with a single seed a stated
  margin (1 pp). Plain and residual series use the same rule.
- `residual_gains`: plain minus residual error at each depth, with its Welch interval.
- `compute_findings`: all of it plus the paper's claims (`analysis.claims`).

Only trials whose status is "finished" count (diverged / early-stopped / failed runs have
no comparable final error); the report lists the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from analysis.cells import (ALPHA, MARGIN, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED,  # noqa: F401
                            aggregate, cell_without, depth_free_key, describe_test, pp,
                            pp_diff, pp_gap, rounded_gap, twin_key, values_by_depth)
from analysis.claims import (Claim, claim_deeper_residual, claim_degradation, claim_fix,
                             claim_layer_responses, claim_shortcuts)
from analysis.onset_claims import DESIGN_CLAIMS, DesignResult, design_claims
from analysis.stats import Comparison, compare_greater, difference_interval, holm
from workers.results import FINISHED


@dataclass
class Onset:
    """Where degradation starts in one series (None: nowhere in the depths tried).

    checked: every (deeper, shallower, comparison) pair of the series; adjusted: the
    Holm-adjusted p-value of each pair with a Welch p-value, keyed (deeper, shallower)."""

    depth: int | None
    shallower: int | None
    comparison: Comparison | None
    test: str
    checked: list[tuple[int, int, Comparison]] = field(default_factory=list)
    adjusted: dict[tuple[int, int], float] = field(default_factory=dict)
    means: dict[int, float] = field(default_factory=dict)   # depth -> mean over seeds

    @property
    def p_adjusted(self) -> float | None:
        """The Holm-adjusted p-value of the onset's pair (None under the margin rule)."""
        return self.adjusted.get((self.depth, self.shallower))

    def describe(self, with_test: bool = True) -> str:
        test = f" ({self.test})" if with_test else ""
        if self.depth is None:
            return f"no degradation: no deeper net is worse than a shallower one{test}"
        c = self.comparison
        p_text = ""
        if self.p_adjusted is not None:
            p_text = (f", Holm-adjusted p = {self.p_adjusted:.2g} over "
                      f"{len(self.adjusted)} depth pair(s)")
        # The gap as the difference of the rounded means the report prints elsewhere.
        gap = (pp_gap(self.means[self.depth], self.means[self.shallower], c.ci)
               if self.means else pp_diff(c.diff, c.ci))
        return (f"onset at depth {self.depth}: training error {gap} over "
                f"depth {self.shallower}{p_text}{test}")


def find_onset(values: dict[int, list[float]], margin: float = MARGIN,
               alpha: float = ALPHA) -> Onset:
    """Smallest depth whose error exceeds some shallower depth's by more than seed noise
    (`compare_greater`; Welch p-values Holm-adjusted over every depth pair of the series).
    Of several shallower depths it beats, the largest gap is reported."""
    depths = sorted(values)
    checked = [(deep, shallow, compare_greater(values[deep], values[shallow], margin, alpha))
               for i, deep in enumerate(depths) for shallow in depths[:i]]
    test = describe_test([len(v) for v in values.values()], margin, alpha, holm=True)
    with_p = [(deep, shallow, c) for deep, shallow, c in checked if c.p_value is not None]
    adjusted = dict(zip([(d, s) for d, s, _ in with_p], holm([c.p_value for *_, c in with_p])))

    def significant(deep: int, shallow: int, c: Comparison) -> bool:
        # A pair without a p-value: the margin rule (one seed), or scipy missing (the
        # tabulated one-sided test, uncorrected).
        p = adjusted.get((deep, shallow))
        return c.greater if p is None else (p < alpha and c.diff > 0)

    means = {d: sum(v) / len(v) for d, v in values.items()}
    for deep in depths:
        hits = [(c.diff, shallow, c) for d, shallow, c in checked
                if d == deep and significant(d, shallow, c)]
        if hits:
            _, shallow, comparison = max(hits, key=lambda hit: hit[0])
            return Onset(deep, shallow, comparison, test, checked, adjusted, means)
    return Onset(None, None, None, test, checked, adjusted, means)


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
class Findings:
    aggregates: pd.DataFrame
    onsets: dict[str, Onset]          # plain series label -> onset
    residual_onsets: dict[str, Onset]  # residual series label -> onset (should be none)
    gains: list[Gain]
    claims: list[Claim]
    excluded: pd.DataFrame            # trials not counted (not finished)
    margin: float = MARGIN
    alpha: float = ALPHA


def series_onsets(done: pd.DataFrame, margin: float = MARGIN, alpha: float = ALPHA
                  ) -> tuple[dict[str, Onset], dict[str, Onset]]:
    """find_onset for every series with two or more depths: (plain, residual) by label."""
    onsets: dict[str, Onset] = {}
    residual_onsets: dict[str, Onset] = {}
    if done.empty or "train_error" not in done:
        return onsets, residual_onsets
    for _, series in done.groupby(done["cell"].map(depth_free_key), sort=False):
        values = values_by_depth(series, "train_error")
        if len(values) < 2:
            continue
        target = residual_onsets if bool(series["residual"].iloc[0]) else onsets
        target[series["series"].iloc[0]] = find_onset(values, margin, alpha)
    return onsets, residual_onsets


def compute_findings(trials: pd.DataFrame, layer_response_means: dict[str, float] | None = None,
                     margin: float = MARGIN, alpha: float = ALPHA,
                     design: DesignResult | None = None) -> Findings:
    """All findings from the trial table of `analysis.runs` (finished trials only).

    layer_response_means: {cell: mean over layers and seeds of the layer-response std},
    from the probes; None or {} when the study has no probes. design: a `design: onset`
    study's replayed decisions; its result decides the depth claims
    (`analysis.onset_claims`), the all-pairs rules stay in their evidence as a cross-check.
    """
    done = trials[trials["status"] == FINISHED] if not trials.empty else trials
    excluded = trials[trials["status"] != FINISHED] if not trials.empty else trials
    aggregates = aggregate(done)
    onsets, residual_onsets = series_onsets(done, margin, alpha)
    gains = residual_gains(done, margin, alpha) if "train_error" in done else []
    claims = [
        claim_degradation(done, onsets, margin, alpha),
        claim_fix(onsets, gains, margin, alpha),
        claim_deeper_residual(done, residual_onsets, margin, alpha),
        claim_shortcuts(aggregates, margin),
        claim_layer_responses(aggregates, layer_response_means or {}),
    ]
    if design is not None:
        decided = design_claims(design, {c.key: c for c in claims if c.key in DESIGN_CLAIMS})
        claims = [decided.get(c.key, c) for c in claims]
    return Findings(aggregates, onsets, residual_onsets, gains, claims, excluded, margin, alpha)
