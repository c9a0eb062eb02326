"""The onset design's hours budget (search_spaces/onset_budget.py): decisions against a
scripted cost (Point -> hours), the stop that names the budget, the worst case in trials
under an hours budget, a replay that holds only unstarted steps to the budget; and the
plan's budget fields and the load-time errors of `resweep plan` on real study files."""

from __future__ import annotations

import json

import pytest

from search_spaces.onset import (BISECT, BUDGET, COARSE, RESIDUAL, RESOLVED, STOP,
                                 OnsetDesign, Point, replay)
from search_spaces.schema import OnsetSpec
from tests.search_spaces.test_onset_design import DEPTHS, run, step_world
from tests.search_spaces.test_study_malformed import ONSET as VALID_ONSET


def by_depth(p: Point) -> float:
    """A scripted cost: depth / 100 hours a trial (plain and residual alike)."""
    return p.depth / 100


def design(cost=by_depth, **budget) -> OnsetDesign:
    spec = OnsetSpec.model_validate({"depth": {"low": 8, "high": 56}, "budget": budget})
    return OnsetDesign(spec, DEPTHS, cost)


def test_an_hours_budget_stops_at_the_step_that_would_exceed_it():
    # coarse: 2 x (8 + 26 + 38 + 56) / 100 = 2.56 h; the bisect at 32 needs 0.64 more.
    trace, values = run(design(gpu_hours=3.0), step_world(onset_after=26))
    assert [s.action for s in trace] == [COARSE, STOP]
    final = trace[-1]
    assert final.stop == BUDGET and final.bracket == (26, 38)
    assert final.reason.startswith(
        "budget spent: the next step (bisect, 2 trials, 0.64 GPU-hours estimated) does not "
        "fit: 2.56 of 3 GPU-hours estimated used, 0.44 left; it was: bisect:")
    assert len(values) == 8


def test_with_both_budgets_the_first_to_run_out_stops_it():
    world = step_world(onset_after=26)
    # 14 trials cost 2.56 + 0.64 + 2 x (0.26 + 0.32) = 4.36 h: ample hours, trials run out.
    trace, _ = run(design(trials=12, cpu_hours=10.0), world)
    assert trace[-1].stop == BUDGET and "(residual, 4 trials) does not fit in the 2 trials " \
        "left of 12" in trace[-1].reason
    # Ample trials, the hours run out before the twins.
    trace, _ = run(design(trials=40, cpu_hours=4.0), world)
    assert [s.action for s in trace] == [COARSE, BISECT, STOP]
    assert "(residual, 4 trials, 1.16 CPU-hours estimated) does not fit: 3.20 of 4 " \
        "CPU-hours estimated used, 0.80 left" in trace[-1].reason
    assert design(trials=40, cpu_hours=4.0).budget.describe() == "40 trials or 4 CPU-hours"
    # Enough of both: the design resolves; 4.36 h of 4.5.
    trace, values = run(design(trials=40, cpu_hours=4.5), world)
    assert trace[-1].stop == RESOLVED and len(values) == 14


def test_max_trials_under_an_hours_budget_is_hours_over_the_cheapest_point():
    # The cheapest point is depth 8 (0.08 h): 3 h buy at most 37 trials; the design's
    # own worst case (9 depths x 5 seeds, plain and residual) is 90.
    assert design(gpu_hours=3.0).max_trials() == 37
    assert design(gpu_hours=100.0).max_trials() == 90
    assert design(gpu_hours=100.0, trials=40).max_trials() == 40
    d = design(gpu_hours=4.0)
    trace, values = run(d, step_world(onset_after=26))
    # After the coarse step (2.56 h) at most floor(1.44 / 0.08) = 18 more.
    assert d.max_more([p for p in values if p.depth in (8, 26, 38, 56)
                       and not p.residual]) == 18
    assert len(values) <= d.max_trials()


def test_replay_holds_only_unstarted_steps_to_the_budget():
    """A record made under one cost replays to the same trace under a cost twice as
    expensive (another machine's calibration), up to the first step it has not started."""
    live_design = design(gpu_hours=4.5)
    live, values = run(live_design, step_world(onset_after=26))
    assert [s.action for s in live] == [COARSE, BISECT, RESIDUAL, STOP]
    dearer = design(cost=lambda p: 2 * by_depth(p), gpu_hours=4.5)
    # Every step of the record was started: the same trace, although 2 x 2.56 h alone
    # would not fit in 4.5 now.
    assert replay(dearer, values).trace == live
    assert dearer.decide({}).stop == BUDGET
    # A record that ends after the bisect: the started steps are the same; the twins,
    # not started, are decided by the budget of the replaying cost model.
    partial = {p: v for p, v in values.items() if not p.residual}
    assert replay(live_design, partial).pending == live[2]
    again = replay(dearer, partial)
    assert again.trace[:2] == live[:2] and again.pending is None
    assert again.final.stop == BUDGET and "(residual, 4 trials, 2.32 GPU-hours " \
        "estimated) does not fit: 6.40 of 4.5 GPU-hours estimated used" in again.final.reason
    # A step with some of its points in the record was started: resumed, not refused.
    started = {**partial, Point(26, True, 0): 0.08}
    resumed = replay(dearer, started)
    assert resumed.pending.action == RESIDUAL and len(resumed.missing) == 3


# The malformed tests' valid onset study, with its budget left to each case.
ONSET = VALID_ONSET.replace("  budget: {trials: 12}\n", "  coarse: 2\n  budget: BUDGET\n")
assert "BUDGET" in ONSET


@pytest.mark.parametrize("budget, resources, device", [
    ("{cpu_hours: 1.5}", "{cpu: 1}", "cpu"),
    ("{gpu_hours: 2.5, trials: 30}", "{cpu: 1, gpu: 0.5}", "gpu")])
def test_plan_json_shows_the_hours_budget(fixed_calibration, run_cli, study_file, budget,
                                          resources, device):
    from search_spaces import load_study
    from search_spaces.onset import design_of

    path = study_file(ONSET.replace("BUDGET", budget) + f"resources: {resources}\n")
    code, out, err = run_cli("plan", str(path), "--json")
    assert code == 0, err
    onset = json.loads(out)["onset"]
    hours = 1.5 if device == "cpu" else 2.5
    assert onset[f"budget_{device}_hours"] == hours
    assert onset["budget_trials"] == (None if device == "cpu" else 30)
    assert onset["budget"] == (f"{hours:g} {device.upper()}-hours" if device == "cpu"
                               else "30 trials or 2.5 GPU-hours")
    # A point's cost is the plan's estimate of its trial: est. seconds x share / 3600.
    plan = json.loads(out)
    d = design_of(load_study(path))
    share = 0.5 if device == "gpu" else 1.0
    first = next(r for r in plan["trials"] if r["name"].startswith("plain-8-") and r["seed"] == 0)
    assert d.budget.cost(Point(8, False, 0)) * 3600 / share == pytest.approx(
        first["est_seconds"], abs=0.06)
    # Depths 8, 14, 20, 26 at seeds.max 5, plain and residual: 40 points at most; the
    # hours over the cheapest point (depth 8) and the trials cap it further.
    cheapest = min(d.budget.cost(Point(8, r, 0)) for r in (False, True))
    expected = min(40, int(hours / cheapest), 30 if device == "gpu" else 40)
    assert onset["worst_case_trials"] == d.max_trials() == expected
    assert 0 < onset[f"worst_case_{device}_hours"] <= hours
    code, out, _ = run_cli("plan", str(path))
    assert code == 0 and f"(budget {onset['budget']})" in out


@pytest.mark.parametrize("budget, resources, message", [
    ("{gpu_hours: 2}", "{cpu: 1}", "onset.budget.gpu_hours: got 2 on a CPU study "
     "(resources.gpu 0); its hours budget is cpu_hours"),
    ("{cpu_hours: 2}", "{cpu: 1, gpu: 1}", "onset.budget.cpu_hours: got 2 on a GPU study "
     "(resources.gpu 1); its hours budget is gpu_hours"),
    ("{}", "{cpu: 1}", "onset.budget: got no budget; give trials, and/or gpu_hours"),
    ("{cpu_hours: 0.0001}", "{cpu: 1}", "onset.budget.cpu_hours: got 0.0001; the first "
     "step alone is estimated at"),
])
def test_bad_hours_budgets_are_refused_with_the_key_path(fixed_calibration, run_cli,
                                                         study_file, budget, resources,
                                                         message):
    path = study_file(ONSET.replace("BUDGET", budget) + f"resources: {resources}\n")
    code, _, err = run_cli("plan", str(path))
    assert code == 2 and message in err and "Traceback" not in err, err
    assert f"{path}:9: " in err      # the budget's line
