"""The onset design on Ray Tune: a Searcher that runs `search_spaces.onset`'s decisions.

`plan_onset(study, tracker, max_concurrent)` reads what earlier runs of the study left in
MLflow (done trials -> their point and final metric), replays the design over that
record and hands Tune the points of the first step the record does not complete; when a
step's trials have all ended, it decides the next step from the results (Tune's
`on_trial_complete`), until the design stops. Trials are the same TrialConfigs any design
makes (`search_spaces.onset.trial_for`), so the workers, packing, resume from a checkpoint
and MLflow logging are those of every study; a rerun after a killed driver replays the
same decisions from the same results and runs no trial twice.

A trial that fails (after Tune's retries) ends the design after the trials already
running: its step is incomplete, so the decisions that follow would differ from what a
rerun (which retries it) decides. The summary lists it; rerun to retry.
"""

from __future__ import annotations

from ray.tune.search import Searcher

from orchestrator.search import _NoTuneState, limit_concurrency
from orchestrator.tune_callbacks import end_status
from orchestrator.tune_run import trial_envelope
from search_spaces.onset import (Point, TrialRecord, design_of, record_value, replay,
                                 trial_for)
from workers.results import DONE_STATUSES


class OnsetSearcher(_NoTuneState, Searcher):
    """Hands out the missing points of the design's current step; waits (None) while
    that step runs; FINISHED once the design stops (or a trial failed).

    record: point -> value of trials done earlier (`record_value`);
    resume_from: trial_id -> checkpoint of an interrupted earlier trial to continue."""

    def __init__(self, study, record: dict[Point, float | None],
                 resume_from: dict[str, str] | None = None, metric: str | None = None):
        super().__init__(metric=metric, mode="min")
        self.study = study
        self.design = design_of(study)
        self.record = dict(record)
        self.resume_from = dict(resume_from or {})
        self.queue: list[Point] = []
        self.running: dict[str, Point] = {}   # Tune trial id -> its point
        self.failed = False
        self.stopped = False
        self._advance()

    def _advance(self) -> None:
        state = replay(self.design, self.record)
        self.queue = list(state.missing)
        self.stopped = state.pending is None

    def suggest(self, trial_id: str):
        if not self.queue and not self.running and not self.failed and not self.stopped:
            self._advance()
        if self.queue and not self.failed:
            point = self.queue.pop(0)
            self.running[trial_id] = point
            trial = trial_for(self.study, point)
            return trial_envelope(trial, resume_from=self.resume_from.pop(trial.trial_id,
                                                                          None))
        if self.running:
            return None   # the step's other trials are still running
        return Searcher.FINISHED

    def outcome(self) -> list[str]:
        """The design's state for the run's summary: its steps, and how it ended."""
        state = replay(self.design, self.record)
        lines = [f"onset step {i + 1} ({step.action}, {len(step.points)} trials): "
                 f"{step.reason}" for i, step in enumerate(state.trace)]
        if state.final is not None:
            lines.append(f"onset stop ({state.final.stop})"
                         + (f": {state.final.residual.describe()}" if state.final.residual else ""))
        else:
            lines.append(f"onset: not finished ({len(state.missing)} trials of step "
                         f"{len(state.trace)} missing{', a trial failed' if self.failed else ''}"
                         "); rerun the same command to continue")
        return lines

    def on_trial_complete(self, trial_id, result=None, error=False):
        point = self.running.pop(trial_id, None)
        if point is None:
            return
        if error or not result:
            self.failed = True
            return
        self.record[point] = record_value(end_status(result), result.get(self.design.spec.metric))


def earlier_record(study, tracker) -> dict[Point, float | None]:
    """The points of the design's steps that earlier runs finished, with their values."""
    outcomes = {tid: (run.status, run.metrics.get(study.spec.onset.metric))
                for tid, run in tracker.earlier.items() if run.status in DONE_STATUSES}
    return TrialRecord(study, outcomes).used(design_of(study))


def plan_onset(study, tracker, max_concurrent: int | None):
    """The RunPlan of a `design: onset` study (see module docstring)."""
    from orchestrator.study_run import RunPlan
    from search_spaces.plan import study_epochs

    record = earlier_record(study, tracker)
    resumable = {}
    for tid in tracker.earlier:
        run = tracker.resumable(tid)
        if run is not None and run.checkpoint:
            resumable[tid] = run.checkpoint
    searcher = OnsetSearcher(study, record, resumable, metric=study.spec.onset.metric)
    started = replay(searcher.design, record).used()   # the current step's points too
    used = len(started) - len(searcher.queue)
    # Tune's num_samples: the current step's missing points and the most that new steps
    # can add within the budget (its hours under this machine's cost model).
    remaining = 0 if searcher.stopped else max(
        1, len(searcher.queue) + searcher.design.max_more(started))
    return RunPlan(limit_concurrency(searcher, max_concurrent), remaining, used,
                   sum(trial_for(study, p).trial_id in resumable for p in searcher.queue),
                   study.spec.onset.metric, "min", None, study_epochs(study),
                   study.resources.cpu, study.resources.gpu, max_concurrent,
                   outcome=searcher.outcome)


def resume_line(study, tracker) -> str:
    """What `resweep run` would do with the design now (`--dry-run` on an existing store)."""
    design = design_of(study)
    record = earlier_record(study, tracker)
    state = replay(design, record)
    if state.pending is None:
        return (f"resweep run would start nothing: the onset design stopped "
                f"({state.final.stop}) after {len(record)} trials")
    return (f"resweep run would resume the onset design at step {len(state.trace)} "
            f"({state.pending.action}): {len(state.missing)} trials to start now, "
            f"{len(record)} done earlier, at most "
            f"{len(state.missing) + design.max_more(state.used())} more in all")
