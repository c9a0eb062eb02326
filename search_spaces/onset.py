"""The onset design: find the depth where plain nets start to degrade with few trials.

A `design: onset` study (`onset:` block, `search_spaces.schema.OnsetSpec`) searches the
valid depths of its block in [depth.low, depth.high] (cifar 6n+2 / 9n+2, imagenet the
paper's depths). Depth d is *degraded* when the plain net's final `metric` at d is above
the one at the shallowest depth (the reference) by a one-sided Welch test at `alpha`
(`search_spaces.stats`), *not degraded* when the one-sided (1 - alpha) upper bound of that
difference is below `margin`, else *undecided*.

The decisions are a pure function of the results so far (`OnsetDesign.decide`), taken
one step at a time; a step is a batch of points (depth, residual, seed) that all finish
before the next decision:

1. coarse: `coarse` depths spread over the range, ends included, `seeds.start` seeds each;
2. seed: every undecided depth shallower than the shallowest degraded one (and the
   reference) gets one more seed, up to `seeds.max`; an undecided comparison at
   `seeds.max` counts as not degraded (degradation is claimed only when significant);
3. bisect: the valid depth halfway between the deepest not-degraded depth and the
   shallowest degraded one, `seeds.start` seeds;
4. residual: once those two depths are at most `resolution` valid depths apart, the
   residual twins at both, with the same seeds (`residual_check`);
5. twin-seed: where a twins' test is undecided (`search_spaces.onset_twins`: `gain`,
   plain minus residual at hi; `worse`, residual at hi minus residual at lo), one more
   seed on each side of it below `seeds.max`; at `seeds.max` an undecided `gain` counts
   as no gain (not fixed) and an undecided `worse` as not worse. A plain seed added at
   hi re-tests hi against the reference, so the bracket may move (then 2-5 go on);
6. stop, with the reason: the bracket is resolved (`resolution`), no depth is degraded
   (`no-degradation`), or the next step does not fit in the budget (`budget`: trials
   and/or the plan's estimated GPU- or CPU-hours, `search_spaces.onset_budget`).

`replay(design, record)` runs these decisions over a record of finished trials (an
MLflow store) in step order: it returns the trace of decisions and the first step not
complete in the record; the budget decides only the steps the record has not started (a
step with any point in the record was started, so it fit when it was). The orchestrator
runs that step's missing points (a rerun after a killed driver makes the same decisions
from the same results and runs no trial twice); the report replays the same record for
its decision trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping
from typing import Sequence

from models.architectures import IMAGENET_LAYOUTS, cifar_depth_step
from search_spaces.onset_budget import Budget, point_hours
from search_spaces.onset_twins import (COUNTED_AS, TwinVerdict, count, series, twin_growth,
                                       twin_verdict, upper_bound)
from search_spaces.schema import OnsetSpec
from search_spaces.stats import compare_greater
from search_spaces.validate import ParamKey
from workers.results import FINISHED

DEGRADED, NOT_DEGRADED, UNDECIDED = "degraded", "not degraded", "undecided"
COARSE, SEED, BISECT, RESIDUAL, STOP = "coarse", "seed", "bisect", "residual", "stop"
TWIN_SEED = "twin-seed"
RESOLVED, NO_DEGRADATION, BUDGET = "resolution", "no-degradation", "budget"
# The two keys the design sets (trial names, `resweep plan` columns).
DEPTH_KEY = ParamKey("model", "depth", "depth")
RESIDUAL_KEY = ParamKey("model", "residual", "residual")
ONSET_FAMILIES = ("cifar", "imagenet")   # families with a depth rule to search


@dataclass(frozen=True, order=True)
class Point:
    """One trial the design asks for."""

    depth: int
    residual: bool
    seed: int

    def label(self) -> str:
        return f"{'resnet' if self.residual else 'plain'}-{self.depth} s{self.seed}"


@dataclass(frozen=True)
class Verdict:
    """Plain net at `depth` against the reference depth: the test that classifies it.

    upper: the one-sided (1 - alpha) upper bound of the difference (NaN if not known)."""

    depth: int
    reference: int
    verdict: str
    seeds: int
    reference_seeds: int
    diff: float = math.nan
    upper: float = math.nan
    p_value: float | None = None

    def describe(self) -> str:
        if math.isnan(self.diff):
            return (f"depth {self.depth} vs {self.reference}: {self.verdict} (fewer than 2 "
                    "finished seeds on a side)")
        p = f", p = {self.p_value:.2g}" if self.p_value is not None else ""
        return (f"depth {self.depth} vs {self.reference}: {100 * self.diff:+.2f} pp{p}, "
                f"upper bound {100 * self.upper:+.2f} pp, {self.seeds} vs "
                f"{self.reference_seeds} seeds: {self.verdict}")


@dataclass(frozen=True)
class Step:
    """One decision: what to run next (`points`), or why the design stops."""

    action: str                       # COARSE | SEED | BISECT | RESIDUAL | TWIN_SEED | STOP
    points: tuple[Point, ...]
    reason: str
    bracket: tuple[int, int] | None = None     # (deepest not degraded, shallowest degraded)
    verdicts: tuple[Verdict, ...] = ()         # the tests this decision read
    stop: str | None = None                    # RESOLVED | NO_DEGRADATION | BUDGET
    residual: TwinVerdict | None = None        # the residual twins' verdict (twin-seed, stop)


@dataclass
class Replay:
    """The decisions over a record, in order, and where the record ends."""

    trace: list[Step] = field(default_factory=list)
    pending: Step | None = None                # the first step not complete in the record
    missing: tuple[Point, ...] = ()            # its points the record lacks

    @property
    def final(self) -> Step | None:
        return self.trace[-1] if self.trace and self.trace[-1].action == STOP else None

    def used(self) -> list[Point]:
        return [p for step in self.trace for p in step.points]


def record_value(status: str, value: float | None) -> float | None:
    """The value a finished trial contributes: its final metric if it trained to the end
    with a finite value, else None (done, but not comparable)."""
    if status != FINISHED or value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def valid_depths(family: str, block: str, low: int, high: int) -> list[int]:
    """Valid depths of the block in [low, high], shallow to deep."""
    if family == "imagenet":
        return [d for d in sorted(IMAGENET_LAYOUTS) if IMAGENET_LAYOUTS[d][0] == block
                and low <= d <= high]
    step = cifar_depth_step(block)
    return [d for d in range(step + 2, high + 1, step) if d >= low]


class OnsetDesign:
    """The decision rule of the module docstring over `depths` (valid, ascending).

    cost: Point -> estimated hours of its trial (`onset_budget.point_hours`), needed only
    for an hours budget; scripted tests pass their own."""

    def __init__(self, spec: OnsetSpec, depths: Sequence[int],
                 cost: Callable[[Point], float] | None = None):
        self.spec = spec
        self.depths = list(depths)
        self.reference = self.depths[0]
        self.budget = Budget(spec.budget, cost)

    def coarse_depths(self) -> list[int]:
        """`coarse` depths evenly spread by index over the valid depths, ends included."""
        n, k = len(self.depths), min(self.spec.coarse, len(self.depths))
        return sorted({self.depths[round(i * (n - 1) / (k - 1))] for i in range(k)})

    def most_points(self) -> int:
        """Every point any path can run: each valid depth at seeds.max plain, and, with
        residual_check, residual too (twins run at the bracket, which a twin seed at hi
        can move; so any depth may end up with twins)."""
        return len(self.depths) * self.spec.seeds.max * (2 if self.spec.residual_check else 1)

    def max_trials(self) -> int:
        """Worst case of the whole design: `most_points`, capped by the budget (the
        design never starts a step that does not fit): `budget.trials`, and an hours
        budget over the cheapest point (the shallowest depth: cost grows with depth)."""
        return self.max_more(())

    def max_more(self, started) -> int:
        """The most trials the design can still add after the points of the steps
        `started` (a replay's `used()`): the bound `resweep run` hands Tune."""
        cheapest = None
        if self.budget.hours is not None:
            cheapest = min(self.budget.cost(Point(self.reference, r, 0)) for r in
                           ((False, True) if self.spec.residual_check else (False,)))
        more = min(self.most_points() - len(started), self.budget.most_more(started, cheapest))
        return int(max(0, more))

    def verdict(self, values: Mapping[Point, float | None], depth: int) -> Verdict:
        deep, ref = series(values, depth, False), series(values, self.reference, False)
        n, n_ref = count(values, depth, False), count(values, self.reference, False)
        if len(deep) < 2 or len(ref) < 2:
            return Verdict(depth, self.reference, UNDECIDED, n, n_ref)
        c = compare_greater(deep, ref, self.spec.margin, self.spec.alpha)
        upper = upper_bound(deep, ref, c, self.spec.alpha)
        verdict = DEGRADED if c.greater else NOT_DEGRADED if upper < self.spec.margin \
            else UNDECIDED
        return Verdict(depth, self.reference, verdict, n, n_ref, c.diff, upper, c.p_value)

    def decide(self, values: Mapping[Point, float | None]) -> Step:
        """The next step given the results of every completed step (point -> value):
        `propose`'s step if it fits in the budget, else the budget stop."""
        return self.fit(self.propose(values), values)

    def fit(self, step: Step, values: Mapping[Point, float | None]) -> Step:
        """`step`, or STOP(budget) when it does not fit after the points of `values`."""
        why = None if step.action == STOP else self.budget.refusal(values, step.points)
        if why is None:
            return step
        return Step(STOP, (), f"budget spent: the next step ({step.action}, {why}; it "
                    f"was: {step.reason}", step.bracket,
                    step.verdicts, BUDGET, step.residual)

    def propose(self, values: Mapping[Point, float | None]) -> Step:
        """The next step of the rule, before the budget (`decide` applies it)."""
        if not values:
            points = tuple(Point(d, False, s) for d in self.coarse_depths()
                           for s in range(self.spec.seeds.start))
            return Step(COARSE, points, f"coarse start: depths "
                        f"{depths_text(self.coarse_depths())}, {self.spec.seeds.start} "
                        "seeds each")
        explored = sorted({p.depth for p in values if not p.residual})
        verdicts = {d: self.verdict(values, d) for d in explored if d != self.reference}
        tests = tuple(verdicts.values())
        degraded = [d for d in explored if d in verdicts and verdicts[d].verdict == DEGRADED]
        hi = degraded[0] if degraded else None
        undecided = [v for d, v in verdicts.items()
                     if v.verdict == UNDECIDED and (hi is None or d < hi)]
        seed_max = self.spec.seeds.max
        grow = sorted({d for v in undecided for d in (v.depth, v.reference)
                       if count(values, d, False) < seed_max})
        if grow:
            points = tuple(Point(d, False, count(values, d, False)) for d in grow)
            why = "; ".join(v.describe() for v in undecided)
            return Step(SEED, points, f"undecided ({why}): one more seed at "
                        f"{depths_phrase(grow)}", None, tests)
        exhausted = [v.depth for v in undecided]
        note = (f" (undecided at seeds.max {seed_max}, counted as not degraded: "
                f"{depths_phrase(exhausted)})" if exhausted else "")
        if hi is None:
            return Step(STOP, (), f"no degradation: no depth up to {explored[-1]} is worse "
                        f"than depth {self.reference}{note}", None, tests, NO_DEGRADATION)
        lo = max(d for d in explored if d < hi)
        bracket = (lo, hi)
        gap = self.depths.index(hi) - self.depths.index(lo)
        deciding = verdicts[hi].describe()
        if gap > self.spec.resolution:
            mid = self.depths[(self.depths.index(lo) + self.depths.index(hi)) // 2]
            points = tuple(Point(mid, False, s) for s in range(self.spec.seeds.start))
            return Step(BISECT, points, f"bisect: depth {lo} not degraded, {hi} degraded "
                        f"({deciding}){note}; try depth {mid}", bracket, tests)
        resolved = (f"onset bracketed: depth {lo} not degraded, depth {hi} degraded "
                    f"({deciding}){note}")
        if not self.spec.residual_check:
            return Step(STOP, (), resolved, bracket, tests, RESOLVED)
        return self._twins(values, bracket, resolved, tests)

    def _twins(self, values, bracket: tuple[int, int], resolved: str, tests) -> Step:
        """Steps 4-5 and the resolved stop: the twins, their seeds, their verdict."""
        lo, hi = bracket
        twins = tuple(p for d in bracket for s in range(count(values, d, False))
                      if (p := Point(d, True, s)) not in values)
        if twins:
            return Step(RESIDUAL, twins, f"{resolved}; run the residual twins at depths "
                        f"{lo} and {hi}", bracket, tests)
        twin = self.residual_verdict(values, bracket)
        grow, exhausted = twin_growth(values, twin, self.spec.seeds.max)
        if grow:
            points = tuple(Point(d, r, count(values, d, r)) for d, r in grow)
            return Step(TWIN_SEED, points, f"{resolved}; residual twins undecided "
                        f"({twin.describe_undecided()}): one more seed for "
                        + ", ".join(p.label() for p in points), bracket, tests,
                        residual=twin)
        note = "".join(f" (twins' {name} undecided at seeds.max {self.spec.seeds.max}, "
                       f"counted as {COUNTED_AS[name]}: {twin.text_of(name)})"
                       for name in exhausted)
        return Step(STOP, (), resolved + note, bracket, tests, RESOLVED, twin)

    def residual_verdict(self, values: Mapping[Point, float | None],
                         bracket: tuple[int, int]) -> TwinVerdict:
        """The residual twins' verdict at the bracket (`onset_twins.TwinVerdict`)."""
        return twin_verdict(values, bracket, self.spec.margin, self.spec.alpha)


def replay(design: OnsetDesign, record: Mapping[Point, float | None]) -> Replay:
    """The decisions `design` makes over `record` (finished points -> value, see
    `record_value`), step by step; points of the record no step asks for are ignored.
    A step of which the record holds any point was started, so it fit the budget then:
    only the steps the record has not started are held to the budget (a resumed driver
    or a report on a machine with another calibration makes the same decisions)."""
    out = Replay()
    seen: dict[Point, float | None] = {}
    while True:
        step = design.propose(seen)
        if not any(p in record for p in step.points):
            step = design.fit(step, seen)
        out.trace.append(step)
        if step.action == STOP:
            return out
        missing = tuple(p for p in step.points if p not in record)
        if missing:
            out.pending, out.missing = step, missing
            return out
        seen.update({p: record[p] for p in step.points})


class TrialRecord(Mapping):
    """Point -> value (`record_value`) of a store's done trials, given as
    {trial_id: (status, final metric)}: each point the design asks about is looked up by
    its trial_id (`trial_for`), so a range of many depths x seeds.max is never resolved
    whole. The orchestrator (MLflow's child runs) and the report (its trial table) build
    the record this one way."""

    def __init__(self, study, outcomes: Mapping[str, tuple[str, float | None]]):
        self.study = study
        self.outcomes = outcomes
        self._ids: dict[Point, str] = {}

    def trial_id(self, point: Point) -> str:
        if point not in self._ids:
            self._ids[point] = trial_for(self.study, point).trial_id
        return self._ids[point]

    def __contains__(self, point) -> bool:
        return isinstance(point, Point) and self.trial_id(point) in self.outcomes

    def __getitem__(self, point: Point) -> float | None:
        if point not in self:
            raise KeyError(point)
        return record_value(*self.outcomes[self.trial_id(point)])

    def __iter__(self):  # the points looked up so far that are in the store
        return (p for p in list(self._ids) if p in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def used(self, design: "OnsetDesign") -> dict[Point, float | None]:
        """The record of the points the design's steps asked for, as a plain dict."""
        return {p: self[p] for p in replay(design, self).used() if p in self}


# ---- trials ----------------------------------------------------------------------------

def design_of(study) -> OnsetDesign:
    """The decision rule of a loaded `design: onset` study; with an hours budget, the
    plan's cost of each point (`onset_budget.point_hours`: calibrates on first use)."""
    spec = study.spec
    depths = valid_depths(spec.model.family or "cifar", spec.model.block or "basic",
                          spec.onset.depth.low, spec.onset.depth.high)
    budget = spec.onset.budget
    hours = budget.gpu_hours is not None or budget.cpu_hours is not None
    return OnsetDesign(spec.onset, depths,
                       point_hours(spec, study.locations) if hours else None)


def trial_for(study, point: Point):
    """The TrialConfig of one point of a loaded study (`point_trial`)."""
    return point_trial(study.spec, study.locations, point)


def point_trial(spec, locations, point: Point):
    """The TrialConfig of one point, resolved and named by the code that expands grids
    (`search_spaces.search.trial_from_params`'s resolver), so equal configs get equal
    trial_ids whatever the design."""
    from search_spaces.expand import Resolver
    from search_spaces.names import trial_name

    cell = {DEPTH_KEY: point.depth, RESIDUAL_KEY: point.residual}
    trial, _ = Resolver(spec, locations).resolve(cell, point.seed)
    values = {DEPTH_KEY.dotted: point.depth, RESIDUAL_KEY.dotted: point.residual}
    return trial.replace(name=trial_name(trial, (DEPTH_KEY, RESIDUAL_KEY), values))


# ---- helpers --------------------------------------------------------------------------

def depths_text(depths) -> str:
    return ", ".join(map(str, depths))


def depths_phrase(depths) -> str:
    """'depth 14' or 'depths 8, 26'."""
    return f"depth{'s' if len(depths) > 1 else ''} {depths_text(depths)}"
