"""The residual twins of the onset design (`search_spaces.onset`): do shortcuts fix the
degradation at the bracket (lo, hi)?

Two one-sided Welch tests (`search_spaces.stats`) over the seeds:
- `gain`: plain minus residual at hi (> 0: the residual net trains better there);
- `worse`: residual at hi minus residual at lo (> 0: the residual nets degrade too).
Each is *decided* when significant at `alpha` or when its one-sided (1 - alpha) upper
bound is below `margin`, else *undecided* (as the plain depths' tests). An undecided test
gets one more seed on each side below `seeds.max` (the design's twin-seed step); at
`seeds.max` it is counted conservatively: no gain (fixed needs a significant gain), and
not worse (degradation is claimed only when significant).

Also the helpers over a design's results (point -> value; points have `depth`,
`residual`, `seed`) that the plain depths' tests use too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from search_spaces.stats import Comparison, compare_greater, t_quantile, welch

GAIN, WORSE = "gain", "worse"
# Counted as, when undecided at seeds.max (see the module docstring).
COUNTED_AS = {GAIN: "no gain", WORSE: "not worse"}


@dataclass(frozen=True)
class TwinVerdict:
    """The two tests at the bracket (`gain`, `worse`: None without finished values on a
    side), their one-sided (1 - alpha) upper bounds (NaN: fewer than 2 values on a
    side), the seeds (points) on each side, and which tests are undecided. Fixed: the
    gain is significant and the residual nets are not significantly worse."""

    bracket: tuple[int, int]
    gain: Comparison | None
    worse: Comparison | None
    gain_upper: float = math.nan
    worse_upper: float = math.nan
    # points run on each side: gain (plain hi, residual hi), worse (residual hi, lo)
    gain_seeds: tuple[int, int] = (0, 0)
    worse_seeds: tuple[int, int] = (0, 0)
    margin: float = math.nan
    undecided: tuple[str, ...] = ()   # GAIN and/or WORSE

    @property
    def fixed(self) -> bool:
        return bool(self.gain and self.worse and self.gain.greater and not self.worse.greater)

    def describe(self) -> str:
        if self.gain is None or self.worse is None:
            return "no finished results"
        lo, hi = self.bracket
        return (f"{'shortcuts fix it' if self.fixed else 'not fixed'}: at depth {hi} plain "
                f"minus residual {self.text_of(GAIN)}; residual {hi} minus residual {lo} "
                f"{self.text_of(WORSE)}")

    def text_of(self, name: str) -> str:
        """One test: difference, p, upper bound, seeds, and 'undecided' if it is."""
        c = self.gain if name == GAIN else self.worse
        upper = self.gain_upper if name == GAIN else self.worse_upper
        n_a, n_b = self.gain_seeds if name == GAIN else self.worse_seeds
        if c is None:
            return f"(no finished values on a side, {n_a} vs {n_b} seeds: undecided)"
        bound = "" if math.isnan(upper) else f", upper bound {100 * upper:+.2f} pp"
        state = ": undecided" if name in self.undecided else ""
        return (f"{100 * c.diff:+.2f} pp ({comparison_text(c)}{bound}, {n_a} vs {n_b} "
                f"seeds{state})")

    def describe_undecided(self) -> str:
        """The undecided tests, e.g. for the twin-seed step's reason."""
        lo, hi = self.bracket
        what = {GAIN: f"plain {hi} minus residual {hi}", WORSE: f"residual {hi} minus "
                f"residual {lo}"}
        return "; ".join(f"{name} ({what[name]}): {self.text_of(name)}"
                         for name in self.undecided)


def twin_verdict(values: Mapping, bracket: tuple[int, int], margin: float,
                 alpha: float) -> TwinVerdict:
    """The residual twins' verdict at `bracket` from the design's results."""
    lo, hi = bracket
    plain_hi, res_hi, res_lo = (series(values, hi, False), series(values, hi, True),
                                series(values, lo, True))
    sides = {GAIN: (plain_hi, res_hi), WORSE: (res_hi, res_lo)}
    tests: dict[str, tuple[Comparison | None, float]] = {}
    for name, (a, b) in sides.items():
        if not a or not b:
            tests[name] = (None, math.nan)
            continue
        c = compare_greater(a, b, margin, alpha)
        tests[name] = (c, upper_bound(a, b, c, alpha))
    undecided = tuple(name for name, (c, upper) in tests.items()
                      if c is None or not c.greater and not upper < margin)
    return TwinVerdict(bracket, tests[GAIN][0], tests[WORSE][0], tests[GAIN][1],
                       tests[WORSE][1],
                       (count(values, hi, False), count(values, hi, True)),
                       (count(values, hi, True), count(values, lo, True)), margin,
                       undecided)


def twin_sides(verdict: TwinVerdict) -> dict[str, tuple[tuple[int, bool], ...]]:
    """The (depth, residual) series on the two sides of each test."""
    lo, hi = verdict.bracket
    return {GAIN: ((hi, False), (hi, True)), WORSE: ((hi, True), (lo, True))}


def twin_growth(values: Mapping, verdict: TwinVerdict,
                seeds_max: int) -> tuple[list[tuple[int, bool]], list[str]]:
    """The series that get one more seed (each side of an undecided test below
    `seeds_max`), sorted by (depth, residual); and the undecided tests with no side left
    to grow (exhausted: counted as `COUNTED_AS`)."""
    sides = twin_sides(verdict)
    grow: set[tuple[int, bool]] = set()
    exhausted = []
    for name in verdict.undecided:
        below = [s for s in sides[name] if count(values, *s) < seeds_max]
        grow.update(below)
        if not below:
            exhausted.append(name)
    return sorted(grow), exhausted


# ---- helpers over a design's results ---------------------------------------------------

def series(values: Mapping, depth: int, residual: bool) -> list[float]:
    """The finished values of the (depth, residual) series, in seed order."""
    return [v for p, v in sorted(values.items())
            if p.depth == depth and p.residual == residual and v is not None]


def count(values: Mapping, depth: int, residual: bool) -> int:
    """Points run in the (depth, residual) series (finished or not)."""
    return sum(p.depth == depth and p.residual == residual for p in values)


def upper_bound(a: list[float], b: list[float], c: Comparison, alpha: float) -> float:
    """One-sided (1 - alpha) upper confidence bound of mean(a) - mean(b) (Welch); NaN
    with fewer than 2 values on a side."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    _, df, se = welch(a, b)
    return c.diff if se == 0.0 else c.diff + t_quantile(1 - alpha, df) * se


def comparison_text(c: Comparison) -> str:
    if c.test != "welch":
        return "single seed: margin"
    return f"Welch p = {c.p_value:.2g}" if c.p_value is not None else "Welch"
