"""The onset design's decisions against scripted results (search_spaces/onset.py): the
exact proposals for given outcomes, resume from a partial record, budget, resolution and
no-degradation stops, seeds added only where a comparison is undecided (plain depths and
the residual twins' tests); the worst case bounds every path; and the errors of a bad
`onset:` block."""

from __future__ import annotations

import random

import pytest

from search_spaces.onset import (BISECT, BUDGET, COARSE, DEGRADED, NO_DEGRADATION,
                                 NOT_DEGRADED, RESIDUAL, RESOLVED, SEED, STOP, TWIN_SEED,
                                 UNDECIDED, OnsetDesign, Point, replay, valid_depths)
from search_spaces.onset_twins import GAIN, WORSE
from search_spaces.schema import OnsetSpec

DEPTHS = valid_depths("cifar", "basic", 8, 56)   # 8, 14, ..., 56: nine depths
NOISE = (-0.002, 0.002, -0.001, 0.001, 0.0)      # per seed


def design(**onset) -> OnsetDesign:
    settings = {"depth": {"low": 8, "high": 56}, "budget": {"trials": 40}, **onset}
    return OnsetDesign(OnsetSpec.model_validate(settings), DEPTHS)


def step_world(onset_after: int, noisy: dict | None = None, twins: dict | None = None):
    """Plain error 10% up to `onset_after`, 20% deeper; residual 8%; `noisy` overrides
    {(depth, seed): value} for plain nets, `twins` for residual nets."""
    def value(p: Point) -> float:
        if not p.residual and noisy and (p.depth, p.seed) in noisy:
            return noisy[(p.depth, p.seed)]
        if p.residual and twins and (p.depth, p.seed) in twins:
            return twins[(p.depth, p.seed)]
        base = 0.08 if p.residual else 0.10 if p.depth <= onset_after else 0.20
        return base + NOISE[p.seed]
    return value


def run(d: OnsetDesign, world):
    """Run the design to its stop against `world`; the steps in order."""
    values, trace = {}, []
    while True:
        step = d.decide(values)
        trace.append(step)
        if step.action == STOP:
            return trace, values
        values.update({p: world(p) for p in step.points})


def plain(depth, *seeds):
    return tuple(Point(depth, False, s) for s in seeds)


def test_valid_depths_follow_the_block():
    assert DEPTHS == [8, 14, 20, 26, 32, 38, 44, 50, 56]
    assert valid_depths("cifar", "bottleneck", 10, 40) == [11, 20, 29, 38]
    assert valid_depths("imagenet", "bottleneck", 18, 152) == [50, 101, 152]


def test_coarse_bisect_residual_then_resolution_stop():
    trace, values = run(design(), step_world(onset_after=26))
    assert [s.action for s in trace] == [COARSE, BISECT, RESIDUAL, STOP]
    assert trace[0].points == plain(8, 0, 1) + plain(26, 0, 1) + plain(38, 0, 1) \
        + plain(56, 0, 1)
    assert trace[1].points == plain(32, 0, 1) and trace[1].bracket == (26, 38)
    assert trace[2].points == tuple(Point(d, True, s) for d in (26, 32) for s in (0, 1))
    final = trace[-1]
    assert final.stop == RESOLVED and final.bracket == (26, 32)
    assert final.residual.fixed and final.residual.describe().startswith("shortcuts fix it")
    assert len(values) == 14
    verdicts = {v.depth: v.verdict for v in final.verdicts}
    assert verdicts == {26: NOT_DEGRADED, 32: DEGRADED, 38: DEGRADED, 56: DEGRADED}


def test_an_undecided_depth_gets_seeds_the_decided_ones_do_not():
    # Depth 26 differs from 8 by ~1.25 pp with a large spread: neither significant nor
    # clearly within the 1 pp margin.
    noisy = {(26, 0): 0.10, (26, 1): 0.125, (26, 2): 0.13, (26, 3): 0.135}
    trace, values = run(design(), step_world(onset_after=20, noisy=noisy))
    first = trace[1]
    assert first.action == SEED and first.points == (Point(8, False, 2), Point(26, False, 2))
    assert [v.verdict for v in first.verdicts if v.depth == 26] == [UNDECIDED]
    # Only depth 26 and the reference ever get a third seed; 38 and 56 were decided.
    assert {p.depth for p in values if p.seed >= 2} == {8, 26}
    assert trace[-1].stop == RESOLVED and trace[-1].bracket == (20, 26)


def test_undecided_at_seeds_max_counts_as_not_degraded():
    noisy = {(26, 0): 0.10, (26, 1): 0.125}
    trace, _ = run(design(seeds={"start": 2, "max": 2}), step_world(26, noisy))
    assert trace[1].action == BISECT and trace[1].bracket == (26, 38)
    assert "undecided at seeds.max 2" in trace[1].reason


def twin_steps(trace):
    """The steps after the plain bracket was resolved: (action, point labels)."""
    start = next(i for i, s in enumerate(trace) if s.action == RESIDUAL)
    return [(s.action, [p.label() for p in s.points]) for s in trace[start:]]


def test_an_undecided_twin_gain_gets_seeds_until_it_is_decided():
    # Residual 32 is about as bad as plain 32 (+0.5 pp, noisy): the gain is neither
    # significant nor clearly within the margin; `worse` (32 vs 26, +11.5 pp) is decided.
    twins = {(32, 0): 0.19, (32, 1): 0.20, (32, 2): 0.195, (32, 3): 0.199}
    trace, values = run(design(seeds={"start": 2, "max": 4}),
                        step_world(onset_after=26, twins=twins))
    assert [s.action for s in trace] == [COARSE, BISECT, RESIDUAL, TWIN_SEED, TWIN_SEED,
                                         STOP]
    # One more seed on both sides of the gain test (plain and residual at hi) per step;
    # residual 26, on `worse`'s side only, gets none.
    assert twin_steps(trace)[1:] == [
        (TWIN_SEED, ["plain-32 s2", "resnet-32 s2"]),
        (TWIN_SEED, ["plain-32 s3", "resnet-32 s3"]), (STOP, [])]
    first = trace[3]
    assert first.residual.undecided == (GAIN,)
    assert "gain (plain 32 minus residual 32): +0.50 pp (Welch p = 0.25, upper bound " \
        "+2.81 pp, 2 vs 2 seeds: undecided)" in first.reason
    assert trace[4].residual.undecided == (GAIN,) and "3 vs 3 seeds: undecided" in \
        trace[4].reason
    final = trace[-1]
    # With 4 seeds a side the gain's upper bound (+0.92 pp) is below the 1 pp margin:
    # decided, no gain, so not fixed; the bracket did not move.
    assert final.stop == RESOLVED and final.bracket == (26, 32)
    assert final.residual.undecided == () and not final.residual.fixed
    assert final.residual.gain_upper == pytest.approx(0.0092, abs=5e-5)
    assert final.residual.gain_seeds == (4, 4) and final.residual.worse_seeds == (4, 2)
    assert "counted as" not in final.reason
    assert len(values) == 18 == 14 + 4


def test_twins_worse_undecided_at_seeds_max_counts_as_not_worse():
    # Residual 26 and 32 both about 8% but noisy: `worse` stays undecided; the gain
    # (plain 20% vs residual 8.5%) becomes significant with the third seed.
    twins = {(32, 0): 0.06, (32, 1): 0.11, (32, 2): 0.085, (26, 0): 0.075, (26, 1): 0.085}
    trace, values = run(design(seeds={"start": 2, "max": 3}),
                        step_world(onset_after=26, twins=twins))
    assert twin_steps(trace) == [
        (RESIDUAL, ["resnet-26 s0", "resnet-26 s1", "resnet-32 s0", "resnet-32 s1"]),
        (TWIN_SEED, ["resnet-26 s2", "plain-32 s2", "resnet-32 s2"]), (STOP, [])]
    assert trace[3].residual.undecided == (GAIN, WORSE)
    final = trace[-1]
    assert final.stop == RESOLVED and final.residual.undecided == (WORSE,)
    assert final.residual.fixed      # an undecided `worse` counts as not worse
    assert final.reason.endswith(
        "(twins' worse undecided at seeds.max 3, counted as not worse: +0.53 pp (Welch "
        "p = 0.37, upper bound +4.62 pp, 3 vs 3 seeds: undecided))")
    assert final.residual.describe().startswith("shortcuts fix it")
    assert len(values) == 17


def test_a_twin_seed_step_that_does_not_fit_stops_with_the_twins_verdict():
    twins = {(32, 0): 0.19, (32, 1): 0.20}
    trace, _ = run(design(budget={"trials": 15}), step_world(onset_after=26, twins=twins))
    final = trace[-1]
    assert [s.action for s in trace] == [COARSE, BISECT, RESIDUAL, STOP]
    assert final.stop == BUDGET and final.residual.undecided == (GAIN,)
    assert "(twin-seed, 2 trials) does not fit in the 1 trials left of 15" in final.reason


def test_max_trials_bounds_every_path():
    """Random worlds (noisy plain steps and twins, failed trials) never run more points
    than max_trials(); every step asks only for new points."""
    rng = random.Random(17)
    twin_seeded = moved = 0
    for case in range(150):
        onset_after = rng.choice(DEPTHS)
        noise = rng.choice((0.001, 0.01, 0.03, 0.08))
        d = design(seeds={"start": 2, "max": rng.choice((2, 3, 4))}, budget={"trials": 500},
                   residual_check=rng.random() < 0.8)

        def world(p: Point) -> float | None:
            if rng.random() < 0.03:
                return None           # a trial that did not finish with a value
            base = 0.08 if p.residual else 0.10 if p.depth <= onset_after else 0.14
            return base + rng.gauss(0, noise)
        values, actions = {}, []
        while (step := d.decide(values)).action != STOP:
            assert step.points and not any(p in values for p in step.points), case
            values.update({p: world(p) for p in step.points})
            actions.append(step.action)
        twin_seeded += TWIN_SEED in actions
        moved += actions.count(RESIDUAL) > 1   # a twin seed at hi moved the bracket
        assert len(values) <= d.max_trials(), case
        assert all(sum(q.depth == p.depth and q.residual == p.residual for q in values)
                   <= d.spec.seeds.max for p in values), case
    assert twin_seeded >= 10 and moved >= 1     # the paths the bound had to cover


def test_budget_stop_says_what_did_not_fit():
    trace, values = run(design(budget={"trials": 12}), step_world(onset_after=26))
    assert [s.action for s in trace] == [COARSE, BISECT, STOP]
    assert trace[-1].stop == BUDGET and trace[-1].bracket == (26, 32)
    assert "residual, 4 trials" in trace[-1].reason and "2 trials left of 12" in trace[-1].reason
    assert len(values) == 10


def test_coarser_resolution_stops_earlier():
    trace, _ = run(design(resolution=2, residual_check=False), step_world(onset_after=26))
    assert [s.action for s in trace] == [COARSE, STOP]
    assert trace[-1].stop == RESOLVED and trace[-1].bracket == (26, 38)


def test_no_degradation_stops_after_the_coarse_step():
    trace, _ = run(design(), lambda p: 0.10 + NOISE[p.seed])
    assert [s.action for s in trace] == [COARSE, STOP]
    assert trace[-1].stop == NO_DEGRADATION


def test_replay_of_a_partial_record_resumes_at_the_missing_points():
    d = design()
    live, values = run(d, step_world(onset_after=26))
    # A driver killed during the bisect step: the coarse step and one bisect seed done.
    partial = {p: v for p, v in values.items() if p.depth != 32 and not p.residual}
    partial[Point(32, False, 1)] = values[Point(32, False, 1)]
    resumed = replay(d, partial)
    assert [s.action for s in resumed.trace] == [COARSE, BISECT]
    assert resumed.pending == live[1] and resumed.missing == (Point(32, False, 0),)
    # The whole record replays to the same decisions as the live run, and so does a
    # record with points no step asks for (another version of the study).
    assert replay(d, values).trace == live
    assert replay(d, {**values, Point(50, False, 7): 0.5}).trace == live


@pytest.mark.parametrize("onset, message", [
    ({"depth": {"low": 9, "high": 56}}, "onset.depth.low: got 9; a basic cifar net needs a "
                                        "depth in 6n+2"),
    ({"depth": {"low": 56, "high": 8}}, "onset.depth: got low 56 >= high 8"),
    ({"seeds": {"start": 4, "max": 3}}, "onset.seeds: got start 4 > max 3"),
    ({"budget": {"trials": 7}}, "onset.budget.trials: got 7; the first step alone is 8"),
    ({"coarse": 12}, "onset.coarse: got 12; 8..56 has 9 valid depths"),
])
def test_bad_onset_blocks_are_refused_with_the_key_path(study_file, run_cli, onset, message):
    import json

    settings = {"depth": {"low": 8, "high": 56}, "budget": {"trials": 40}, **onset}
    path = study_file(f"name: bad\nmodel: {{family: cifar, block: basic}}\ndesign: onset\n"
                      f"onset: {json.dumps(settings)}\n")
    code, out, err = run_cli("plan", str(path))
    assert code == 2 and message in err and "Traceback" not in err


def test_onset_section_belongs_to_the_onset_design(study_file, run_cli):
    path = study_file("name: bad\ndesign: grid\nspace: {depth: [20]}\n"
                      "onset: {depth: {low: 8, high: 20}, budget: {trials: 10}}\n")
    code, _, err = run_cli("plan", str(path))
    assert code == 2 and "onset: got a onset section with design 'grid'" in err
