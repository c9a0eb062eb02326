"""The search view (`design: search`): the best trial and its configuration, the
optimisation history (best so far against trial number), parameter importance, a
parallel-coordinates figure, and the trials the scheduler stopped early.

- Trials are numbered in the order they started. The objective is the study's
  `search.metric` / `mode` (the parent run's study.yaml; without it the metric of the
  parent's resweep.best_<metric> tag, minimised), read as MLflow holds it: the last value
  a trial logged. As in `resweep run`'s summary (the parent's resweep.best_trial), the best
  trial is taken over finished and early-stopped trials.
- Importance: Optuna's `FanovaImportanceEvaluator` (fANOVA over a random forest, 64 trees,
  seed 0, so reruns agree), on the *finished* trials only (a stopped trial's value is from
  an earlier epoch), with the study's own distributions. Not Optuna 5's default
  PED-ANOVA: it compares the top 10% of trials with the rest, which a search of a few
  dozen trials does not have.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.figures import FigureFile, integer_ticks, save_figure
from analysis.section import Section
from analysis.store import Tag
from search_spaces import search_space
from workers.results import FINISHED, STOPPED

HISTORY_FIGURE = "9-search-history"
IMPORTANCE_FIGURE = "10-search-importance"
PARALLEL_FIGURE = "11-search-parallel-coordinates"
EVALUATOR = "Optuna FanovaImportanceEvaluator (fANOVA, 64 trees, seed 0)"
MIN_FOR_IMPORTANCE = 3   # finished trials with two or more values of a parameter


@dataclass
class SearchView:
    metric: str
    mode: str
    scheduler: str | None        # e.g. "asha" (None: no early stopping)
    trials: pd.DataFrame         # number, name, run_id, status, metric, params (dict), best
    best: pd.Series | None
    importance: dict[str, float] | None
    importance_note: str


def _objective(runs, study) -> tuple[str, str, str | None]:
    if study is not None and study.search is not None:
        scheduler = study.search.scheduler
        name = None
        if scheduler is not None:
            dumped = scheduler.model_dump() if hasattr(scheduler, "model_dump") else scheduler
            name = next((k for k, v in dict(dumped).items() if v), None) \
                if isinstance(dumped, dict) else str(dumped)
        return study.search.metric, study.search.mode, name
    prefix = "resweep.best_"
    names = [k[len(prefix):] for k in runs.parent_tags
             if k.startswith(prefix) and k not in (Tag.BEST_RUN_ID, Tag.BEST_TRIAL)]
    return (names[0] if names else "val_error"), "min", None


def search_view(runs, study=None) -> SearchView | None:
    """The search analysis of `runs` (an `analysis.runs.StudyRuns`); None unless the trials
    carry searcher proposals (resweep.search_params)."""
    trials = runs.trials
    if trials.empty or "search_params" not in trials or trials["search_params"].isna().all():
        return None
    metric, mode, scheduler = _objective(runs, study)
    table = trials.sort_values("start_time").reset_index(drop=True)
    table = table.assign(number=range(1, len(table) + 1),
                         proposal=table["search_params"].map(
                             lambda s: json.loads(s) if isinstance(s, str) else {}),
                         value=table[metric] if metric in table else math.nan)
    scored = table[table["status"].isin([FINISHED, STOPPED]) & table["value"].notna()]
    best = None
    if not scored.empty:
        index = scored["value"].idxmin() if mode == "min" else scored["value"].idxmax()
        best = table.loc[index]
    running = table["value"].where(table["status"].isin([FINISHED, STOPPED]))
    table["best_so_far"] = running.cummin() if mode == "min" else running.cummax()
    importance, note = parameter_importance(table, study, mode)
    return SearchView(metric, mode, scheduler, table, best, importance, note)


def _distribution(spec: dict):
    import optuna.distributions as od

    if spec["type"] == "choice":
        return od.CategoricalDistribution(spec["values"])
    if spec["type"] == "int":
        return od.IntDistribution(spec["low"], spec["high"], log=bool(spec.get("log")),
                                  step=spec.get("step") or 1)
    return od.FloatDistribution(spec["low"], spec["high"], log=bool(spec.get("log")),
                                step=spec.get("step"))


def _space(table: pd.DataFrame, study) -> dict:
    """The search space as Optuna distributions: the study file's, else from the values."""
    import optuna.distributions as od

    if study is not None and study.design == "search":
        return {k: _distribution(v) for k, v in search_space(study).items()}
    keys = dict.fromkeys(k for p in table["proposal"] for k in p)
    space = {}
    for key in keys:
        values = [p[key] for p in table["proposal"] if key in p]
        if all(isinstance(v, float) for v in values):
            space[key] = od.FloatDistribution(min(values), max(values))
        else:
            space[key] = od.CategoricalDistribution(sorted(set(values), key=str))
    return space


def parameter_importance(table: pd.DataFrame, study, mode: str
                         ) -> tuple[dict[str, float] | None, str]:
    """fANOVA importance of each parameter on the finished trials (see module docstring)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = table[(table["status"] == FINISHED) & table["value"].notna()]
    if len(done) < MIN_FOR_IMPORTANCE:
        return None, (f"not computed: {len(done)} finished trial(s); {EVALUATOR} needs at "
                      f"least {MIN_FOR_IMPORTANCE}")
    space = _space(table, study)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for _, t in done.iterrows():
        params = {k: v for k, v in t["proposal"].items() if k in space}
        target.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: space[k] for k in params}, value=float(t["value"])))
    varied = [k for k in space if done["proposal"].map(lambda p: json.dumps(p.get(k))).nunique() > 1]
    if not varied:
        return None, "not computed: every finished trial has the same parameters"
    importance = get_param_importances(target, evaluator=FanovaImportanceEvaluator(seed=0),
                                       params=varied)
    constant = sorted(set(space) - set(varied))
    note = f"{EVALUATOR} on the {len(done)} finished trials"
    if constant:
        note += f"; not ranked (one value among them): {', '.join(constant)}"
    return dict(importance), note


def _value_text(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _config_text(proposal: dict) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in proposal.items())


def search_section(runs, study, out_dir: Path) -> Section | None:
    view = search_view(runs, study)
    if view is None:
        return None
    lines = []
    stopped_label = f"stopped early ({view.scheduler})" if view.scheduler else "stopped early"
    if view.best is not None:
        b = view.best
        lines.append(f"best trial: #{b['number']} {b['name']} ({b['status']}), {view.metric} "
                     f"{b['value']:.4g}; configuration: {_config_text(b['proposal'])}; "
                     f"MLflow run {b['run_id']}")
        recorded = runs.parent_tags.get(Tag.BEST_RUN_ID)
        if recorded:
            same = "the same trial" if recorded == b["run_id"] else f"a different run ({recorded})"
            lines.append(f"the parent run's {Tag.BEST_RUN_ID} names {same}")
    stopped = view.trials[view.trials["status"] == STOPPED]
    lines.append(f"{len(stopped)} of {len(view.trials)} trials {stopped_label}"
                 + (": " + ", ".join(f"#{n}" for n in stopped["number"]) if len(stopped) else ""))
    if view.importance:
        lines.append("parameter importance (" + view.importance_note + "): " + ", ".join(
            f"{k} {v:.2f}" for k, v in view.importance.items()))
    else:
        lines.append(f"parameter importance {view.importance_note}")
    rows = []
    for _, t in view.trials.iterrows():
        status = stopped_label if t["status"] == STOPPED else t["status"]
        epochs = "" if pd.isna(t.get("epoch", math.nan)) else str(int(t["epoch"]))
        rows.append([str(t["number"]), t["name"], status, epochs,
                     "n/a" if pd.isna(t["value"]) else f"{t['value']:.4g}",
                     "n/a" if pd.isna(t["best_so_far"]) else f"{t['best_so_far']:.4g}",
                     _config_text(t["proposal"])])
    figures = [f for f in (plot_history(view, out_dir), plot_importance(view, out_dir),
                           plot_parallel(view, out_dir)) if f is not None]
    note = (f"Objective: {view.mode} final {view.metric} (the last value each trial logged); "
            f"best so far over finished and early-stopped trials, as resweep run's summary.")
    return Section("search", "Search: best trial, history and parameter importance", lines,
                   ["#", "trial", "status", "epochs", view.metric, "best so far",
                    "configuration"], rows, note, figures)


def plot_history(view: SearchView, out_dir: Path) -> FigureFile | None:
    t = view.trials
    if t["value"].notna().sum() < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    done, stopped = t[t["status"] == FINISHED], t[t["status"] == STOPPED]
    ax.scatter(done["number"], done["value"], color="#386cb0", label="finished", zorder=3)
    ax.scatter(stopped["number"], stopped["value"], facecolors="none", edgecolors="#d95f02",
               label="stopped early", zorder=3)
    ax.step(t["number"], t["best_so_far"], where="post", color="black", lw=1.6,
            label="best so far")
    ax.set_xlabel("trial number (start order)")
    ax.set_ylabel(view.metric)
    integer_ticks(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title(f"Optimisation history ({view.mode} {view.metric})")
    return save_figure(fig, out_dir, HISTORY_FIGURE, "Optimisation history",
                       f"Each trial's final {view.metric} in start order; hollow: stopped early "
                       "by the scheduler (value at its last epoch); line: best so far.")


def plot_importance(view: SearchView, out_dir: Path) -> FigureFile | None:
    if not view.importance:
        return None
    names = list(view.importance)[::-1]
    fig, ax = plt.subplots(figsize=(5.6, 0.5 * len(names) + 1.4))
    ax.barh(names, [view.importance[n] for n in names], color="#7570b3")
    ax.set_xlabel("importance (normalised, sums to 1)")
    ax.set_title("Parameter importance")
    return save_figure(fig, out_dir, IMPORTANCE_FIGURE, "Parameter importance",
                       view.importance_note + ".")


def plot_parallel(view: SearchView, out_dir: Path) -> FigureFile | None:
    """One vertical axis per parameter plus the objective, one line per trial (colour: the
    objective; dashed grey: stopped early). Categorical values are spread evenly; floats on
    a log axis when they span more than a decade."""
    t = view.trials[view.trials["value"].notna()]
    keys = list(dict.fromkeys(k for p in t["proposal"] for k in p))
    if len(t) < 2 or not keys:
        return None
    columns, ticks = [], []
    for key in keys + ["__value__"]:
        raw = t["value"].tolist() if key == "__value__" else [p.get(key) for p in t["proposal"]]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        if numeric and len(set(raw)) > 2 or key == "__value__":
            values = np.array(raw, dtype=float)
            log = values.min() > 0 and values.max() / values.min() > 10
            scaled = np.log10(values) if log else values
            low, high = scaled.min(), scaled.max()
            columns.append((scaled - low) / (high - low) if high > low else scaled * 0 + 0.5)
            ticks.append([(0.0, _value_text(float(min(raw)))), (1.0, _value_text(float(max(raw))))])
        else:
            levels = sorted(set(raw), key=lambda v: (0, v, "") if numeric else (1, 0, str(v)))
            pos = {v: (i / (len(levels) - 1) if len(levels) > 1 else 0.5)
                   for i, v in enumerate(levels)}
            columns.append(np.array([pos[v] for v in raw]))
            ticks.append([(pos[v], str(v)) for v in levels])
    data = np.vstack(columns).T                     # (trials, axes)
    fig, ax = plt.subplots(figsize=(1.6 * data.shape[1] + 2, 4.2))
    cmap = plt.get_cmap("viridis_r" if view.mode == "min" else "viridis")
    colour_of = columns[-1]
    for row, status, c in zip(data, t["status"], colour_of):
        stopped = status == STOPPED
        ax.plot(range(data.shape[1]), row, color="0.6" if stopped else cmap(c),
                ls="--" if stopped else "-", lw=1.2 if stopped else 1.8, alpha=0.9)
    for x, axis_ticks in enumerate(ticks):
        ax.axvline(x, color="0.2", lw=0.8)
        for y, text in axis_ticks:
            ax.text(x + 0.04, y, text, fontsize=7.5, va="center")
    ax.set_xticks(range(data.shape[1]), keys + [view.metric])
    ax.set_yticks([])
    ax.spines[["left", "bottom"]].set_visible(False)
    ax.set_title("Parallel coordinates (dashed grey: stopped early)")
    return save_figure(fig, out_dir, PARALLEL_FIGURE, "Parallel coordinates",
                       f"One line per trial across its parameters and final {view.metric}; "
                       "colour: the objective (bright = better); dashed grey: stopped early.")
