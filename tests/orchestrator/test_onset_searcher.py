"""The onset design's Tune searcher (orchestrator/onset_search.py), driven the way Tune
drives it (suggest / on_trial_complete) with scripted results: the steps' trials in
order, waiting while a step runs, the next step from the results, FINISHED at the stop;
resuming from a record; a failed trial ends the design. No trial is trained here."""

from __future__ import annotations

import textwrap

import pytest
from ray.tune.search import Searcher

from orchestrator.onset_search import OnsetSearcher
from orchestrator.tune_run import RESUME_FROM, envelope_trial
from search_spaces import load_study
from search_spaces.onset import Point, trial_for
from workers.results import FINISHED, STATUS

STUDY = """\
name: onset-searcher
data: {dataset: fashion-mnist, train_size: 256, val_size: 64}
train: {recipe: cosine, epochs: 1}
model: {family: cifar, block: basic, width: 0.25}
design: onset
onset:
  depth: {low: 8, high: 26}
  coarse: 2
  seeds: {start: 2, max: 3}
  budget: {trials: 12}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("onset") / "study.yaml"
    path.write_text(textwrap.dedent(STUDY))
    return load_study(path)


def world(p: Point) -> float:
    """Plain 10% up to depth 14, 20% deeper; residual 8%; +-0.2 pp between seeds."""
    base = 0.08 if p.residual else 0.10 if p.depth <= 14 else 0.20
    return base + (-0.002, 0.002, 0.0)[p.seed]


def point_of(config) -> Point:
    t = envelope_trial(config)
    return Point(t.model.depth, t.model.residual, t.seed)


def drive(searcher: OnsetSearcher, fail: Point | None = None) -> list[list[Point]]:
    """Run every suggestion of a step to completion before asking again; the batches."""
    batches, n = [], 0
    while True:
        batch = []
        while True:
            n += 1
            config = searcher.suggest(f"t{n}")
            if config is None or config == Searcher.FINISHED:
                break
            batch.append((f"t{n}", point_of(config)))
        if batch:
            batches.append([p for _, p in batch])
        for tune_id, p in batch:
            searcher.on_trial_complete(tune_id, {STATUS: FINISHED, "train_error": world(p)},
                                       error=p == fail)
        if config == Searcher.FINISHED:
            return batches


def test_a_step_waits_for_its_last_trial(study):
    searcher = OnsetSearcher(study, {}, metric="train_error")
    points = [point_of(searcher.suggest(f"t{i}")) for i in range(4)]
    assert points == [Point(8, False, 0), Point(8, False, 1), Point(26, False, 0),
                      Point(26, False, 1)]
    for i, p in enumerate(points[:3]):
        searcher.on_trial_complete(f"t{i}", {STATUS: FINISHED, "train_error": world(p)})
    assert searcher.suggest("t4") is None     # t3 still runs: no decision yet
    searcher.on_trial_complete("t3", {STATUS: FINISHED, "train_error": world(points[3])})
    assert point_of(searcher.suggest("t5")) == Point(14, False, 0)


def test_a_whole_design_and_its_trace(study):
    searcher = OnsetSearcher(study, {}, metric="train_error")
    batches = drive(searcher)
    # 26 degraded -> bisect 14 (not degraded) -> bisect 20 (degraded) -> twins at 14, 20:
    # 12 trials, exactly the budget.
    assert batches == [
        [Point(8, False, 0), Point(8, False, 1), Point(26, False, 0), Point(26, False, 1)],
        [Point(14, False, 0), Point(14, False, 1)],
        [Point(20, False, 0), Point(20, False, 1)],
        [Point(14, True, 0), Point(14, True, 1), Point(20, True, 0), Point(20, True, 1)],
    ]
    outcome = searcher.outcome()
    assert outcome[-1].startswith("onset stop (resolution): shortcuts fix it")
    assert len(searcher.record) == 12


def test_resume_hands_out_only_what_the_record_lacks(study):
    done = {Point(8, False, 0): 0.098, Point(8, False, 1): 0.102, Point(26, False, 0): 0.198}
    missing = trial_for(study, Point(26, False, 1))
    searcher = OnsetSearcher(study, done, resume_from={missing.trial_id: "/ckpt/26-1"},
                             metric="train_error")
    config = searcher.suggest("r1")
    assert point_of(config) == Point(26, False, 1) and config[RESUME_FROM] == "/ckpt/26-1"
    assert searcher.suggest("r2") is None     # the step's last trial is running


def test_a_failed_trial_ends_the_design_after_the_running_ones(study):
    searcher = OnsetSearcher(study, {}, metric="train_error")
    batches = drive(searcher, fail=Point(26, False, 1))
    assert len(batches) == 1
    assert "a trial failed" in searcher.outcome()[-1]


def test_an_hours_budget_ends_the_design_at_the_step_that_would_exceed_it(
        tmp_path, fixed_calibration):
    from search_spaces.onset import design_of

    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(STUDY).replace("budget: {trials: 12}",
                                                  "budget: {cpu_hours: 1.0}"))
    design = design_of(load_study(path))
    coarse = design.decide({}).points
    # The plan's estimate of the coarse step (4 trials), and a budget just above it.
    spent = design.budget.hours_of(coarse)
    path.write_text(path.read_text().replace("cpu_hours: 1.0", f"cpu_hours: {spent * 1.01}"))
    searcher = OnsetSearcher(load_study(path), {}, metric="train_error")
    assert drive(searcher) == [list(coarse)]
    outcome = searcher.outcome()
    assert outcome[-1] == "onset stop (budget)"
    assert f"does not fit: {spent:.2f} of {spent * 1.01:g} CPU-hours estimated used" \
        in outcome[-2]
