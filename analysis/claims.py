"""He et al. (2015)'s claims, each checked against a study's findings with a verdict, the
numbers behind it and the test that decided it (`analysis.findings.compute_findings`
calls these with its onsets and gains).

One rule for depth within a series: the onset test of `analysis.findings.find_onset`
(one-sided Welch, Holm-corrected over the depth pairs; a margin with one seed). It finds
where plain nets degrade, and the same test on residual series decides "deeper residual
nets are no worse" (supported iff no residual series has an onset), so the residual onset
lines and that claim cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.cells import (NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, cell_without,
                            depth_free_key, describe_test, pp, pp_diff, pp_gap, rounded_gap,
                            twin_key, values_by_depth)
from analysis.stats import summarize
from analysis.store import Param


@dataclass
class Claim:
    """One of the paper's claims, checked against this study."""

    claim: str
    source: str       # where in He et al. (2015)
    verdict: str      # SUPPORTED / NOT_SUPPORTED / NOT_TESTABLE
    evidence: str     # the numbers behind the verdict; " | " separates items (one a line)
    test: str         # how the verdict was decided
    key: str = ""     # short name: the parent run's tag resweep.claim.<key>


def series_values_text(done: pd.DataFrame, series: str, metric: str = "train_error") -> str:
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


def _series_seed_counts(done: pd.DataFrame, series_labels) -> list[int]:
    return [len(v) for series in series_labels
            for v in values_by_depth(done[done["series"] == series], "train_error").values()]


def claim_degradation(done: pd.DataFrame, onsets: dict, margin: float, alpha: float) -> Claim:
    claim = "Deeper plain nets have higher training error than shallower ones (degradation)"
    source = "Fig. 1, Fig. 6 (left), Table 2"
    if not onsets:
        return Claim(claim, source, NOT_TESTABLE,
                     "needs finished plain nets at two or more depths that differ in nothing else",
                     "-", "degradation")
    evidence, found = [], False
    for series, onset in onsets.items():
        evidence.append(series_values_text(done, series) + "; " + onset.describe(False))
        found = found or onset.depth is not None
    # The rule over every plain series' seed counts, not just the first series'.
    test = describe_test(_series_seed_counts(done, onsets), margin, alpha, holm=True)
    return Claim(claim, source, SUPPORTED if found else NOT_SUPPORTED, " | ".join(evidence),
                 test, "degradation")


def claim_fix(onsets: dict, gains: list, margin: float, alpha: float) -> Claim:
    claim = ("Residual nets train better than their plain twins where plain nets degrade "
             "(the fix)")
    source = "Fig. 6, Table 2"
    onset_depths = [o.depth for o in onsets.values() if o.depth is not None]
    if not onset_depths:
        return Claim(claim, source, NOT_TESTABLE,
                     "no degradation onset was found, so there is nothing to fix", "-", "fix")
    first = min(onset_depths)
    relevant = [g for g in gains if g.depth >= first]
    if not relevant:
        return Claim(claim, source, NOT_TESTABLE,
                     f"no residual twin at depth >= {first} (the onset)", "-", "fix")
    evidence = []
    for g in relevant:
        p_text = (f", p = {g.train_better.p_value:.2g}" if g.train_better.p_value is not None
                  else "")
        evidence.append(f"depth {g.depth}: {g.plain} {pp(g.plain_train)} vs {g.residual} "
                        f"{pp(g.residual_train)} training error, plain - residual = "
                        f"{pp_gap(g.plain_train, g.residual_train, g.train_ci)}{p_text}")
    ok = all(g.train_better.greater for g in relevant)
    test = ("plain > residual training error at every depth >= the onset: "
            + describe_test([n for g in relevant for n in (g.n_plain, g.n_residual)],
                            margin, alpha))
    return Claim(claim, source, SUPPORTED if ok else NOT_SUPPORTED, " | ".join(evidence), test,
                 "fix")


def claim_deeper_residual(done: pd.DataFrame, residual_onsets: dict, margin: float,
                          alpha: float) -> Claim:
    """Supported iff the onset test finds no onset in any residual series."""
    claim = "Deeper residual nets have lower or equal training error (no degradation onset)"
    source = "Fig. 6 (middle), Table 6"
    if not residual_onsets:
        return Claim(claim, source, NOT_TESTABLE,
                     "needs finished residual nets at two or more depths that differ in nothing "
                     "else", "-", "deeper_residual")
    evidence, degraded = [], False
    for series, onset in residual_onsets.items():
        values = values_by_depth(done[done["series"] == series], "train_error")
        means = {d: sum(v) / len(v) for d, v in values.items()}
        depths = sorted(means)
        # Largest rise of the mean training error from any depth to any deeper one.
        rise, pair = max(((rounded_gap(means[b], means[a]), (a, b)) for i, a in enumerate(depths)
                          for b in depths[i + 1:]), key=lambda item: item[0])
        evidence.append(f"{series_values_text(done, series)}; largest rise with depth "
                        f"{pp_diff(rise)} ({pair[0]} -> {pair[1]}); {onset.describe(False)}")
        degraded = degraded or onset.depth is not None
    test = ("the onset test of the plain nets, applied to each residual series: "
            + describe_test(_series_seed_counts(done, residual_onsets), margin, alpha,
                            holm=True))
    return Claim(claim, source, NOT_SUPPORTED if degraded else SUPPORTED, " | ".join(evidence),
                 test, "deeper_residual")


def claim_shortcuts(aggregates: pd.DataFrame, margin: float) -> Claim:
    claim = f"Shortcut options A, B and C give errors within {100 * margin:g} pp of each other"
    source = "Table 3"
    metric = "test_error_mean" if "test_error_mean" in aggregates else "train_error_mean"
    if aggregates.empty:
        return Claim(claim, source, NOT_TESTABLE, "no finished trials", "-", "shortcuts")
    residual = aggregates[aggregates["residual"]]
    evidence, spreads = [], []
    by_options = residual["cell"].map(lambda c: cell_without(c, Param.SHORTCUT))
    for _, group in residual.groupby(by_options, sort=False):
        if group["shortcut"].nunique() < 2 or group[metric].isna().all():
            continue
        values = dict(zip(group["shortcut"], group[metric]))
        spread = rounded_gap(max(values.values()), min(values.values()))
        spreads.append(spread)
        depth = group["depth"].iloc[0]
        evidence.append(f"depth {depth}: " + ", ".join(f"{k} {pp(v)}" for k, v in
                                                      sorted(values.items()))
                        + f" {metric.replace('_mean', '').replace('_', ' ')}, spread "
                        f"{100 * spread:.1f} pp")
    if not spreads:
        return Claim(claim, source, NOT_TESTABLE,
                     "no depth has two shortcut options trained with everything else equal", "-",
                     "shortcuts")
    verdict = SUPPORTED if max(spreads) <= margin else NOT_SUPPORTED
    return Claim(claim, source, verdict, " | ".join(evidence),
                 f"spread (max - min) of the mean over seeds <= {100 * margin:g} pp at each depth",
                 "shortcuts")


def claim_layer_responses(aggregates: pd.DataFrame, responses: dict[str, float]) -> Claim:
    claim = "Residual nets' layer responses (std after BN) are smaller than plain nets'"
    source = "Fig. 7"
    if aggregates.empty or not responses:
        return Claim(claim, source, NOT_TESTABLE, "no layer-response probes recorded", "-",
                     "layer_responses")
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
                     "no depth has probes of both a plain and a residual net", "-",
                     "layer_responses")
    return Claim(claim, source, SUPPORTED if all(results) else NOT_SUPPORTED,
                 " | ".join(evidence),
                 "mean over layers (and seeds) of each layer's response std: residual < plain "
                 "at every depth", "layer_responses")


__all__ = ["Claim", "claim_degradation", "claim_fix", "claim_deeper_residual",
           "claim_shortcuts", "claim_layer_responses", "series_values_text", "depth_free_key"]
