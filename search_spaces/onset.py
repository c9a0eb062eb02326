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
5. stop, with the reason: the bracket is resolved (`resolution`), no depth is degraded
   (`no-degradation`), or the next step does not fit in `budget.trials` (`budget`).

`replay(design, record)` runs these decisions over a record of finished trials (an
MLflow store) in step order: it returns the trace of decisions and the first step not
complete in the record. The orchestrator runs that step's missing points (a rerun after
a killed driver makes the same decisions from the same results and runs no trial twice);
the report replays the same record for its decision trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Sequence

from models.architectures import IMAGENET_LAYOUTS, cifar_depth_step
from search_spaces.schema import OnsetSpec
from search_spaces.stats import Comparison, compare_greater, t_quantile, welch
from search_spaces.validate import ParamKey
from workers.results import FINISHED

DEGRADED, NOT_DEGRADED, UNDECIDED = "degraded", "not degraded", "undecided"
COARSE, SEED, BISECT, RESIDUAL, STOP = "coarse", "seed", "bisect", "residual", "stop"
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

    action: str                       # COARSE | SEED | BISECT | RESIDUAL | STOP
    points: tuple[Point, ...]
    reason: str
    bracket: tuple[int, int] | None = None     # (deepest not degraded, shallowest degraded)
    verdicts: tuple[Verdict, ...] = ()         # the tests this decision read
    stop: str | None = None                    # RESOLVED | NO_DEGRADATION | BUDGET
    residual: "TwinVerdict | None" = None      # the residual twins' verdict (at the stop)


@dataclass(frozen=True)
class TwinVerdict:
    """Do shortcuts fix the degradation at the bracket (lo, hi): `gain` tests plain minus
    residual at hi (> 0: the residual net trains better), `worse` residual at hi minus
    residual at lo (> 0: the residual nets degrade too). Fixed: the gain is significant
    and the residual nets are not significantly worse (None: no finished twins)."""

    bracket: tuple[int, int]
    gain: Comparison | None
    worse: Comparison | None

    @property
    def fixed(self) -> bool:
        return bool(self.gain and self.worse and self.gain.greater and not self.worse.greater)

    def describe(self) -> str:
        lo, hi = self.bracket
        if self.gain is None or self.worse is None:
            return "no finished results"
        return (f"{'shortcuts fix it' if self.fixed else 'not fixed'}: at depth {hi} plain "
                f"minus residual {100 * self.gain.diff:+.2f} pp ({_test(self.gain)}); "
                f"residual {hi} minus residual {lo} {100 * self.worse.diff:+.2f} pp "
                f"({_test(self.worse)})")


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
    """The decision rule of the module docstring over `depths` (valid, ascending)."""

    def __init__(self, spec: OnsetSpec, depths: Sequence[int]):
        self.spec = spec
        self.depths = list(depths)
        self.reference = self.depths[0]

    def coarse_depths(self) -> list[int]:
        """`coarse` depths evenly spread by index over the valid depths, ends included."""
        n, k = len(self.depths), min(self.spec.coarse, len(self.depths))
        return sorted({self.depths[round(i * (n - 1) / (k - 1))] for i in range(k)})

    def max_trials(self) -> int:
        """Worst case: every valid depth at seeds.max, plus the residual twins; capped by
        the budget (the design never starts a step that does not fit)."""
        seeds = self.spec.seeds.max
        twins = 2 * seeds if self.spec.residual_check else 0
        return min(self.spec.budget.trials, len(self.depths) * seeds + twins)

    def verdict(self, values: Mapping[Point, float | None], depth: int) -> Verdict:
        deep, ref = _series(values, depth, False), _series(values, self.reference, False)
        n, n_ref = _count(values, depth, False), _count(values, self.reference, False)
        if len(deep) < 2 or len(ref) < 2:
            return Verdict(depth, self.reference, UNDECIDED, n, n_ref)
        c = compare_greater(deep, ref, self.spec.margin, self.spec.alpha)
        upper = _upper_bound(deep, ref, c, self.spec.alpha)
        verdict = DEGRADED if c.greater else NOT_DEGRADED if upper < self.spec.margin \
            else UNDECIDED
        return Verdict(depth, self.reference, verdict, n, n_ref, c.diff, upper, c.p_value)

    def decide(self, values: Mapping[Point, float | None]) -> Step:
        """The next step given the results of every completed step (point -> value)."""
        left = self.spec.budget.trials - len(values)
        if not values:
            points = tuple(Point(d, False, s) for d in self.coarse_depths()
                           for s in range(self.spec.seeds.start))
            return self._fits(Step(COARSE, points, f"coarse start: depths "
                                   f"{depths_text(self.coarse_depths())}, {self.spec.seeds.start} "
                                   "seeds each"), left, None)
        explored = sorted({p.depth for p in values if not p.residual})
        verdicts = {d: self.verdict(values, d) for d in explored if d != self.reference}
        tests = tuple(verdicts.values())
        degraded = [d for d in explored if d in verdicts and verdicts[d].verdict == DEGRADED]
        hi = degraded[0] if degraded else None
        undecided = [v for d, v in verdicts.items()
                     if v.verdict == UNDECIDED and (hi is None or d < hi)]
        seed_max = self.spec.seeds.max
        grow = sorted({d for v in undecided for d in (v.depth, v.reference)
                       if _count(values, d, False) < seed_max})
        if grow:
            points = tuple(Point(d, False, _count(values, d, False)) for d in grow)
            why = "; ".join(v.describe() for v in undecided)
            return self._fits(Step(SEED, points, f"undecided ({why}): one more seed at "
                                   f"depths {depths_text(grow)}", None, tests), left, None)
        exhausted = [v.depth for v in undecided]
        note = (f" (undecided at seeds.max {seed_max}, counted as not degraded: depths "
                f"{depths_text(exhausted)})" if exhausted else "")
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
            return self._fits(Step(BISECT, points, f"bisect: depth {lo} not degraded, "
                                   f"{hi} degraded ({deciding}){note}; try depth {mid}",
                                   bracket, tests), left, bracket)
        resolved = (f"onset bracketed: depth {lo} not degraded, depth {hi} degraded "
                    f"({deciding}){note}")
        if self.spec.residual_check:
            twins = tuple(Point(d, True, s) for d in bracket
                          for s in range(_count(values, d, False)))
            if not all(p in values for p in twins):
                return self._fits(Step(RESIDUAL, twins, f"{resolved}; run the residual "
                                       f"twins at depths {lo} and {hi}", bracket, tests),
                                  left, bracket)
            return Step(STOP, (), resolved, bracket, tests, RESOLVED,
                        self.residual_verdict(values, bracket))
        return Step(STOP, (), resolved, bracket, tests, RESOLVED)

    def residual_verdict(self, values: Mapping[Point, float | None],
                         bracket: tuple[int, int]) -> TwinVerdict:
        """The residual twins' verdict at the bracket (`TwinVerdict`)."""
        lo, hi = bracket
        plain_hi, res_hi = _series(values, hi, False), _series(values, hi, True)
        res_lo = _series(values, lo, True)
        if min(len(plain_hi), len(res_hi), len(res_lo)) == 0:
            return TwinVerdict(bracket, None, None)
        return TwinVerdict(bracket,
                           compare_greater(plain_hi, res_hi, self.spec.margin, self.spec.alpha),
                           compare_greater(res_hi, res_lo, self.spec.margin, self.spec.alpha))

    def _fits(self, step: Step, left: int, bracket) -> Step:
        if len(step.points) <= left:
            return step
        return Step(STOP, (), f"budget spent: the next step ({step.action}, "
                    f"{len(step.points)} trials) does not fit in the {left} trials left of "
                    f"{self.spec.budget.trials}; it was: {step.reason}", bracket,
                    step.verdicts, BUDGET)


def replay(design: OnsetDesign, record: Mapping[Point, float | None]) -> Replay:
    """The decisions `design` makes over `record` (finished points -> value, see
    `record_value`), step by step; points of the record no step asks for are ignored."""
    out = Replay()
    seen: dict[Point, float | None] = {}
    while True:
        step = design.decide(seen)
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
    """The decision rule of a loaded `design: onset` study."""
    spec = study.spec
    depths = valid_depths(spec.model.family or "cifar", spec.model.block or "basic",
                          spec.onset.depth.low, spec.onset.depth.high)
    return OnsetDesign(spec.onset, depths)


def trial_for(study, point: Point):
    """The TrialConfig of one point, resolved and named by the code that expands grids
    (`search_spaces.search.trial_from_params`'s resolver), so equal configs get equal
    trial_ids whatever the design."""
    from search_spaces.expand import Resolver
    from search_spaces.names import trial_name

    cell = {DEPTH_KEY: point.depth, RESIDUAL_KEY: point.residual}
    trial, _ = Resolver(study.spec, study.locations).resolve(cell, point.seed)
    values = {DEPTH_KEY.dotted: point.depth, RESIDUAL_KEY.dotted: point.residual}
    return trial.replace(name=trial_name(trial, (DEPTH_KEY, RESIDUAL_KEY), values))


# ---- helpers --------------------------------------------------------------------------

def _series(values: Mapping[Point, float | None], depth: int, residual: bool) -> list[float]:
    return [v for p, v in sorted(values.items())
            if p.depth == depth and p.residual == residual and v is not None]


def _count(values: Mapping[Point, float | None], depth: int, residual: bool) -> int:
    return sum(p.depth == depth and p.residual == residual for p in values)


def _upper_bound(deep: list[float], ref: list[float], c: Comparison, alpha: float) -> float:
    """One-sided (1 - alpha) upper confidence bound of mean(deep) - mean(ref) (Welch)."""
    _, df, se = welch(deep, ref)
    return c.diff if se == 0.0 else c.diff + t_quantile(1 - alpha, df) * se


def _test(c: Comparison) -> str:
    if c.test != "welch":
        return "single seed: margin"
    return f"Welch p = {c.p_value:.2g}" if c.p_value is not None else "Welch"


def depths_text(depths) -> str:
    return ", ".join(map(str, depths))
