"""Findings on constructed data with a known answer: degradation onset (noisy seeds, a
single seed with the margin, no degradation at all), residual gains, the claims table."""

import math

import pandas as pd
import pytest

from analysis.findings import (MARGIN, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED,
                               compute_findings, find_onset)
from analysis.runs import label_cells


# ---- onset on plain numbers ------------------------------------------------------------

def test_onset_with_noisy_seeds():
    # 32 is within seed noise of 20 (means differ by 0.2 pp); 44 is clearly worse.
    values = {20: [0.100, 0.110, 0.095], 32: [0.105, 0.098, 0.108],
              44: [0.150, 0.160, 0.155], 56: [0.20, 0.21, 0.19]}
    onset = find_onset(values)
    assert onset.depth == 44
    assert onset.comparison.test == "welch" and onset.comparison.p_value < 0.05
    assert "Welch" in onset.test and "onset at depth 44" in onset.describe()
    # 32 was checked against 20 and not flagged.
    (deep, shallow, c32), = [c for c in onset.checked if c[0] == 32]
    assert shallow == 20 and not c32.greater


def test_noise_larger_than_the_gap_is_no_onset():
    # The deeper net's mean is 1.7 pp higher, but the seeds scatter over 10 pp.
    values = {20: [0.10, 0.05, 0.15], 56: [0.17, 0.08, 0.10]}
    onset = find_onset(values)
    assert onset.depth is None and onset.checked[0][2].p_value > 0.05
    assert onset.describe().startswith("no degradation")


def test_onset_with_a_single_seed_uses_the_margin():
    # 32 is 0.6 pp above 20 (< 1 pp margin), 44 is 2.5 pp above 20.
    values = {20: [0.100], 32: [0.106], 44: [0.125]}
    onset = find_onset(values)
    assert onset.depth == 44 and onset.shallower == 20
    assert onset.comparison.test == "margin"
    assert onset.comparison.diff == pytest.approx(0.025)
    assert "single seed" in onset.test and f"{100 * MARGIN:g} pp" in onset.test


def test_onset_against_any_shallower_depth_not_only_the_previous():
    # 44 is within 1 pp of 32 but 1.5 pp above 20: degradation relative to 20.
    onset = find_onset({20: [0.100], 32: [0.107], 44: [0.115]})
    assert (onset.depth, onset.shallower) == (44, 20)


def test_no_degradation_at_all():
    onset = find_onset({20: [0.12, 0.125, 0.118], 32: [0.11, 0.112, 0.109],
                        44: [0.10, 0.104, 0.101]})
    assert onset.depth is None and onset.comparison is None
    assert len(onset.checked) == 3 and not any(c.greater for _, _, c in onset.checked)


# ---- claims on trial tables --------------------------------------------------------------

def trial_table(errors: dict, seeds: int = 3, noise: float = 0.003) -> pd.DataFrame:
    """A trial table like analysis.runs builds: {(residual, depth, shortcut): train error}."""
    rows = []
    for (residual, depth, shortcut), error in errors.items():
        for seed in range(seeds):
            train = error + noise * (seed - (seeds - 1) / 2)
            rows.append({"run_id": f"r{len(rows)}", "status": "finished", "seed": seed,
                         "model.depth": depth, "model.residual": residual,
                         "model.shortcut": shortcut, "train.lr": 0.1, "depth": depth,
                         "residual": residual, "shortcut": shortcut,
                         "train_error": train, "test_error": train + 0.02})
    table = pd.DataFrame(rows)
    label_cells(table)
    return table


def verdicts(findings) -> dict[str, str]:
    return {c.source: c.verdict for c in findings.claims}


def test_degradation_and_its_fix():
    table = trial_table({(False, 20, "A"): 0.10, (False, 56, "A"): 0.16,
                         (True, 20, "A"): 0.095, (True, 56, "A"): 0.09})
    findings = compute_findings(table)
    assert findings.onsets["plain"].depth == 56
    assert verdicts(findings) == {
        "Fig. 1, Fig. 6 (left), Table 2": SUPPORTED,      # deeper plain -> higher error
        "Fig. 6, Table 2": SUPPORTED,                      # residual fixes it at 56
        "Fig. 6 (middle), Table 6": SUPPORTED,             # deeper residual not worse
        "Table 3": NOT_TESTABLE,                           # one shortcut option
        "Fig. 7": NOT_TESTABLE,                            # no probes
    }
    gain56 = next(g for g in findings.gains if g.depth == 56)
    assert gain56.train_gain == pytest.approx(0.07) and gain56.train_ci > 0
    assert gain56.train_better.greater and gain56.n_plain == gain56.n_residual == 3
    fix = findings.claims[1]
    assert "plain-56 16.0% vs resnet-56 9.0%" in fix.evidence


def test_no_degradation_means_nothing_to_fix():
    table = trial_table({(False, 20, "A"): 0.10, (False, 56, "A"): 0.101,
                         (True, 20, "A"): 0.095, (True, 56, "A"): 0.09})
    v = verdicts(compute_findings(table))
    assert v["Fig. 1, Fig. 6 (left), Table 2"] == NOT_SUPPORTED
    assert v["Fig. 6, Table 2"] == NOT_TESTABLE


def test_deeper_residual_worse_by_more_than_the_margin():
    table = trial_table({(True, 20, "A"): 0.09, (True, 32, "A"): 0.095, (True, 56, "A"): 0.12})
    claim = compute_findings(table).claims[2]
    assert claim.verdict == NOT_SUPPORTED and "+3.0 pp (20 -> 56)" in claim.evidence


def test_shortcut_options_within_and_beyond_the_margin():
    close = trial_table({(True, 20, "A"): 0.090, (True, 20, "B"): 0.087,
                         (True, 20, "C"): 0.085, (False, 20, "A"): 0.1})
    claim = compute_findings(close).claims[3]
    assert claim.verdict == SUPPORTED and "spread 0.5 pp" in claim.evidence
    apart = trial_table({(True, 20, "A"): 0.110, (True, 20, "B"): 0.087})
    assert compute_findings(apart).claims[3].verdict == NOT_SUPPORTED


def test_layer_responses_claim():
    table = trial_table({(False, 20, "A"): 0.10, (True, 20, "A"): 0.09})
    cells = dict(zip(table["residual"], table["cell"]))
    smaller = compute_findings(table, {cells[False]: 1.0, cells[True]: 0.4}).claims[4]
    assert smaller.verdict == SUPPORTED and "plain-20 1.000 vs resnet-20 0.400" in smaller.evidence
    larger = compute_findings(table, {cells[False]: 0.5, cells[True]: 0.7}).claims[4]
    assert larger.verdict == NOT_SUPPORTED


def test_single_seed_study_states_its_test():
    table = trial_table({(False, 20, "A"): 0.142, (False, 56, "A"): 0.385,
                         (True, 20, "A"): 0.129, (True, 56, "A"): 0.137}, seeds=1)
    findings = compute_findings(table)
    degradation, fix = findings.claims[0], findings.claims[1]
    assert degradation.verdict == fix.verdict == SUPPORTED
    assert "single seed" in degradation.test and "single seed" in fix.test
    gain = next(g for g in findings.gains if g.depth == 56)
    assert gain.train_gain == pytest.approx(0.248) and math.isnan(gain.train_ci)


def test_unfinished_trials_are_not_counted():
    table = trial_table({(False, 20, "A"): 0.10, (False, 56, "A"): 0.16})
    table.loc[table["depth"] == 56, "status"] = "diverged"
    findings = compute_findings(table)
    assert len(findings.excluded) == 3 and set(findings.aggregates["depth"]) == {20}
    assert findings.claims[0].verdict == NOT_TESTABLE
