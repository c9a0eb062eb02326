"""The onset design's budget (`onset.budget`, `search_spaces.schema.OnsetBudget`): trials,
and/or estimated hours of the resource the study's trials hold.

Hours are the plan's cost model (`resweep plan`, `search_spaces.plan.trial_hours`): a
trial's estimated wall seconds x its share (resources.gpu on a GPU study: GPU-hours;
resources.cpu on a CPU study: CPU core-hours) / 3600. The design starts a step only if
it fits in every budget given, counting the estimate of the points already run (not their
measured time, so the decision is the same wherever it is replayed with the same cost
model); `replay` counts a step of which the record holds any point as having fit (it was
started), so a calibration that differs on another machine only decides new steps.

`point_hours(spec, locations)` is the cost of one point (Point -> hours) that
`search_spaces.onset.design_of` hands the pure decision rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

from search_spaces.schema import OnsetBudget

HOURS_UNITS = {"gpu_hours": "GPU-hours", "cpu_hours": "CPU-hours"}
_SLACK = 1e-9   # relative: sums of floats that equal the budget still fit


def hours_key(gpu: float) -> str:
    """The budget key of a study's hours: gpu_hours when its trials hold a GPU."""
    return "gpu_hours" if gpu > 0 else "cpu_hours"


class Budget:
    """What the design may still start: `refusal` says why a step does not fit."""

    def __init__(self, spec: OnsetBudget, cost: Callable | None = None):
        self.trials = spec.trials
        self.key = next((k for k in HOURS_UNITS if getattr(spec, k) is not None), None)
        self.hours = getattr(spec, self.key) if self.key else None
        self.unit = HOURS_UNITS.get(self.key, "")
        if self.hours is not None and cost is None:
            raise ValueError("an hours budget needs a cost function (Point -> hours)")
        self.cost = cost

    def describe(self) -> str:
        """'40 trials', '2.5 GPU-hours' or '40 trials or 2.5 GPU-hours'."""
        parts = ([f"{self.trials} trials"] if self.trials is not None else []) + \
            ([f"{self.hours:g} {self.unit}"] if self.hours is not None else [])
        return " or ".join(parts)

    def hours_of(self, points) -> float:
        return math.fsum(self.cost(p) for p in points)

    def refusal(self, used: Collection, points: Collection) -> str | None:
        """Why a step of `points` does not fit after the points `used`, or None."""
        if self.trials is not None and len(used) + len(points) > self.trials:
            return (f"{len(points)} trials) does not fit in the {self.trials - len(used)} "
                    f"trials left of {self.trials}")
        if self.hours is not None:
            spent, need = self.hours_of(used), self.hours_of(points)
            if spent + need > self.hours * (1 + _SLACK):
                return (f"{len(points)} trials, {need:.2f} {self.unit} estimated) does not "
                        f"fit: {spent:.2f} of {self.hours:g} {self.unit} estimated used, "
                        f"{max(0.0, self.hours - spent):.2f} left")
        return None

    def most_more(self, used: Collection, cheapest: float | None) -> float:
        """The most trials new steps can add after `used` (inf: no cap), given the
        cheapest point's hours."""
        caps = [math.inf]
        if self.trials is not None:
            caps.append(max(0, self.trials - len(used)))
        if self.hours is not None and cheapest:
            left = self.hours - self.hours_of(used)
            caps.append(max(0, math.floor(left * (1 + _SLACK) / cheapest)))
        return min(caps)


def point_hours(spec, locations) -> Callable:
    """Point -> estimated hours of its trial (`search_spaces.plan.trial_hours`), one
    estimate per (depth, residual); the cost model calibrates on first use (cached per
    machine, `search_spaces.cost`)."""
    from models.complexity import model_stats
    from search_spaces.onset import point_trial
    from search_spaces.plan import trial_hours

    measured: dict = {}
    known: dict[tuple[int, bool], float] = {}

    def hours(point) -> float:
        key = (point.depth, point.residual)
        if key not in known:
            trial = point_trial(spec, locations, point)
            stats = model_stats(trial.model)
            if isinstance(stats, Exception):   # a ConfigError: not a net of the block
                raise stats
            known[key] = trial_hours(trial, stats.macs, measured)
        return known[key]
    return hours
