"""The depth claims of an onset study come from the design's own result
(analysis/onset_claims.py): scripted worlds replayed through the real decision rule, and
the verdict each claim gets, with the all-pairs rule kept as a cross-check."""

from __future__ import annotations

import pandas as pd

from analysis.cells import NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED
from analysis.claims import claim_deeper_residual, claim_degradation, claim_fix
from analysis.onset_claims import DesignResult, design_claims
from search_spaces.onset import OnsetDesign, Point, replay, valid_depths
from search_spaces.schema import OnsetSpec

DEPTHS = valid_depths("cifar", "basic", 8, 56)
NOISE = (-0.002, 0.002, -0.001, 0.001, 0.0)
# The generic (all-pairs) claims of a store with no trials: what the design replaces.
GENERIC = {c.key: c for c in (claim_degradation(pd.DataFrame(), {}, 0.01, 0.05),
                              claim_fix({}, [], 0.01, 0.05),
                              claim_deeper_residual(pd.DataFrame(), {}, 0.01, 0.05))}


def world(onset_after: int | None, residual: float = 0.08, residual_deep: float | None = None):
    """Plain 10% up to `onset_after` (None: everywhere), 20% deeper; residual nets
    `residual`, or `residual_deep` at depths past the onset."""
    def value(p: Point) -> float:
        deep = onset_after is not None and p.depth > onset_after
        if p.residual:
            base = residual_deep if deep and residual_deep is not None else residual
        else:
            base = 0.20 if deep else 0.10
        return base + NOISE[p.seed]
    return value


def result(value, budget: int = 40, stop_after: int | None = None, **onset) -> DesignResult:
    """The design run against `value` (all of it, or its first `stop_after` steps) and
    replayed from that record, as the report replays a store."""
    spec = OnsetSpec.model_validate({"depth": {"low": 8, "high": 56},
                                     "budget": {"trials": budget}, **onset})
    design = OnsetDesign(spec, DEPTHS)
    record: dict[Point, float] = {}
    for _ in range(stop_after if stop_after is not None else 100):
        state = replay(design, record)
        if state.pending is None:
            break
        record.update({p: value(p) for p in state.missing})
    return DesignResult(design, replay(design, record))


def verdicts(r: DesignResult) -> dict[str, str]:
    return {k: c.verdict for k, c in design_claims(r, GENERIC).items()}


def test_a_resolved_bracket_with_good_twins_supports_all_three_claims():
    r = result(world(onset_after=26))
    claims = design_claims(r, GENERIC)
    assert verdicts(r) == {"degradation": SUPPORTED, "fix": SUPPORTED,
                           "deeper_residual": SUPPORTED}
    assert claims["degradation"].evidence.startswith(
        "onset bracketed between depth 26 (not degraded) and depth 32 (degraded): "
        "depth 32 vs 8: +10.00 pp")
    # The all-pairs rule (here: no trials, not testable) stays visible as a cross-check.
    assert claims["degradation"].evidence.endswith(
        "cross-check, all-pairs rule over the same trials: not testable")
    assert "one-sided Welch t-test of each explored depth against depth 8" in \
        claims["degradation"].test
    assert claims["fix"].evidence.startswith("shortcuts fix it: at depth 32 plain minus "
                                             "residual +12.00 pp")
    assert [c.key for c in claims.values()] == ["degradation", "fix", "deeper_residual"]


def test_residual_twins_that_degrade_too_do_not_fix_it():
    r = result(world(onset_after=26, residual_deep=0.20))
    assert verdicts(r) == {"degradation": SUPPORTED, "fix": NOT_SUPPORTED,
                           "deeper_residual": NOT_SUPPORTED}
    assert "residual 32 minus residual 26: +12.00 pp" in \
        design_claims(r, GENERIC)["deeper_residual"].evidence


def test_no_degradation_is_not_supported_and_leaves_nothing_to_fix():
    r = result(world(onset_after=None))
    assert r.state.final.stop == "no-degradation"
    assert verdicts(r) == {"degradation": NOT_SUPPORTED, "fix": NOT_TESTABLE,
                           "deeper_residual": NOT_TESTABLE}
    assert "before them" in design_claims(r, GENERIC)["fix"].evidence


def test_an_unfinished_design_decides_nothing():
    r = result(world(onset_after=26), stop_after=1)
    assert r.state.final is None
    assert set(verdicts(r).values()) == {NOT_TESTABLE}
    assert "rerun the study to continue" in design_claims(r, GENERIC)["degradation"].evidence


def test_a_budget_stop_after_a_degraded_depth_still_supports_degradation():
    # The coarse step (8 trials) finds 38 and 56 degraded; the bisect step does not fit.
    r = result(world(onset_after=26), budget=9)
    assert r.state.final.stop == "budget"
    claims = design_claims(r, GENERIC)
    assert claims["degradation"].verdict == SUPPORTED
    assert "the budget stop came before the bracket was resolved" in \
        claims["degradation"].evidence
    assert claims["fix"].verdict == NOT_TESTABLE


def test_without_residual_check_the_fix_is_not_testable():
    r = result(world(onset_after=26), residual_check=False)
    claims = design_claims(r, GENERIC)
    assert claims["degradation"].verdict == SUPPORTED
    assert claims["fix"].verdict == NOT_TESTABLE
    assert claims["fix"].evidence.startswith("residual_check is off")
