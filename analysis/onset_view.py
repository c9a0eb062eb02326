"""The report's onset section, for a `design: onset` study (search_spaces/onset.py).

Nothing of the design is stored besides the trials: the section replays the design's
pure decision rule over the trials the store holds (`search_spaces.onset.replay`, the
record built by `TrialRecord` as the orchestrator builds it), with the study file and the
`--set` items the latest `resweep run` logged. So the trace shown is, by construction,
the decisions that chose those trials: which depths and seeds were added and why, the
bracketing depths with the test that decided them, the residual twins' verdict, and how
the design stopped (or what it still lacks). The figure is the depth map with the
explored points over every valid depth of the range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.figures import FigureFile, percent_axis, plt, save_figure
from analysis.onset_claims import DesignResult
from analysis.section import Section
from analysis.store import Tag
from search_spaces import load_study_text
from search_spaces.onset import (OnsetDesign, Point, Replay, TrialRecord, design_of,
                                 replay)
from workers.results import DONE_STATUSES

ONSET_FIGURE = "6-onset-design"


@dataclass
class OnsetSection:
    """The replayed design of one study and what the report shows of it."""

    design: OnsetDesign
    state: Replay
    record: dict[Point, float | None]
    figure: FigureFile | None

    def summary(self) -> str:
        spec, depths = self.design.spec, self.design.depths
        grid = len(depths) * spec.seeds.max
        return (f"{len(self.record)} trials of a budget of {self.design.budget.describe()} "
                f"(worst case {self.design.max_trials()}); the full grid over the {len(depths)} valid "
                f"depths {depths[0]}..{depths[-1]} at seeds.max {spec.seeds.max}: {grid} "
                f"plain trials, {2 * grid} with residual twins")

    def outcome(self) -> list[str]:
        """How the design ended: the stop, the bracket and its test, the twins."""
        final = self.state.final
        if final is None:
            step = self.state.pending
            return [f"not finished: step {len(self.state.trace)} ({step.action}) lacks "
                    f"{len(self.state.missing)} trials ("
                    + ", ".join(p.label() for p in self.state.missing)
                    + "); rerun the study to continue"]
        lines = [f"stopped ({final.stop}): {final.reason}"]
        if final.bracket:
            lo, hi = final.bracket
            decided = {v.depth: v for v in final.verdicts}
            lines.append(f"bracket: depth {lo} not degraded, depth {hi} degraded; deciding "
                         f"test: {decided[hi].describe()}")
        if final.residual:
            lines.append(f"residual twins: {final.residual.describe()}")
        return lines

    def steps(self) -> list[tuple[int, str, str, str]]:
        """(number, action, trials added, reason) of every decision."""
        return [(i + 1, s.action, _points_text(s.points), s.reason)
                for i, s in enumerate(self.state.trace)]

    def lines(self) -> list[str]:
        """The section as text (the terminal)."""
        return ([self.summary()] + [f"step {n} ({action}): {added + '; ' if added else ''}"
                                    f"{reason}" for n, action, added, reason in self.steps()]
                + self.outcome())

    def result(self) -> DesignResult:
        """What the claims table reads (`analysis.onset_claims`)."""
        return DesignResult(self.design, self.state)

    def section(self) -> Section:
        """The report's section: summary and outcome, the decision trace as a table, the
        map (`analysis.report` lays it out like every design view, before the others)."""
        return Section(
            "onset", "Onset design", [self.summary()] + self.outcome(),
            ["step", "action", "trials added", "why"],
            [[str(n), a, t, r] for n, a, t, r in self.steps()],
            "Decision trace replayed from the trials in the store with the design's decision "
            "rule (search_spaces/onset.py): the same decisions that chose them. The paper "
            "claims above are decided by this result.",
            [self.figure] if self.figure is not None else [], terminal=self.lines())


def onset_section(runs, study_text: str | None, figures_dir: Path) -> OnsetSection | None:
    """The section for `runs` when its latest `resweep run` ran an onset study, else None."""
    if runs.parent_run_id is None or not study_text:
        return None
    tags = runs.client.get_run(runs.parent_run_id).data.tags
    if tags.get(Tag.DESIGN) != "onset":
        return None
    study = load_study_text(study_text, "study.yaml", json.loads(tags.get(Tag.OVERRIDES, "[]")))
    design = design_of(study)
    metric = design.spec.metric
    done = runs.trials[runs.trials["status"].isin(DONE_STATUSES)]
    outcomes = {row["trial_id"]: (row["status"], row.get(metric)) for _, row in done.iterrows()}
    record = TrialRecord(study, outcomes).used(design)
    state = replay(design, record)
    return OnsetSection(design, state, record, plot_onset_map(design, state, record,
                                                              figures_dir))


def plot_onset_map(design: OnsetDesign, state: Replay, record: dict[Point, float | None],
                   out_dir: Path) -> FigureFile | None:
    """The metric against depth: each seed as a dot (plain: orange, residual: green), the
    mean over seeds as a line, the number of the step that added each depth, the bracket
    shaded, and ticks at every valid depth of the range (unexplored ones grey)."""
    points = [(p, v) for p, v in record.items() if v is not None]
    if not points:
        return None
    table = pd.DataFrame([{"depth": p.depth, "residual": p.residual, "value": 100 * v}
                          for p, v in points])
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    for residual, colour, name in ((False, "#d95f02", "plain"), (True, "#1b9e77", "residual")):
        rows = table[table["residual"] == residual]
        if rows.empty:
            continue
        ax.scatter(rows["depth"], rows["value"], s=16, color=colour, alpha=0.6, zorder=3)
        mean = rows.groupby("depth")["value"].mean()
        ax.plot(mean.index, mean.values, "--" if not residual else "-", color=colour, lw=1.6,
                marker="o", markersize=5, label=f"{name} (mean over seeds)")
    first_step: dict[int, int] = {}
    for number, step in enumerate(state.trace, 1):
        for p in step.points:
            first_step.setdefault(p.depth, number)
    ax.margins(y=0.18)
    top = ax.get_ylim()[1]
    for depth, number in first_step.items():
        ax.annotate(str(number), (depth, top), xytext=(0, -11), textcoords="offset points",
                    ha="center", fontsize=7.5, color="#555")
    final = state.final
    if final is not None and final.bracket:
        lo, hi = final.bracket
        ax.axvspan(lo, hi, color="#999", alpha=0.15, lw=0, label=f"bracket {lo}-{hi}")
    explored = set(first_step)
    ax.set_xticks(design.depths)
    ax.tick_params(axis="x", labelsize=7)
    for label, depth in zip(ax.get_xticklabels(), design.depths):
        label.set_color("#222" if depth in explored else "#bbb")
    ax.set_xlabel("depth (valid depths of the block; grey: not run)")
    percent_axis(ax, f"final {design.spec.metric.replace('_', ' ')} (%)")
    ax.set_title("Onset design: explored points (numbers: the step that added a depth)")
    ax.legend(frameon=False, loc="best", fontsize=8)
    return save_figure(fig, out_dir, ONSET_FIGURE, "Onset design map",
                       "Dots: single seeds; lines: means over seeds (plain dashed, residual "
                       "solid); shaded: the bracketing depths; numbers above: the step of "
                       "the decision trace that first ran a depth.")


def _points_text(points) -> str:
    """(depth, residual, seed) points compactly: 'plain-32 s0,s1; resnet-26 s0,s1'."""
    groups: dict[tuple[bool, int], list[int]] = {}
    for p in points:
        groups.setdefault((p.residual, p.depth), []).append(p.seed)
    return "; ".join(f"{'resnet' if r else 'plain'}-{d} " + ",".join(f"s{s}" for s in seeds)
                     for (r, d), seeds in groups.items())

