"""`plan_study(study)`: what a study would run and what it would cost, as plain data.

Used by `resweep plan` (and `resweep run --dry-run`). Nothing is trained: grid and
ablation studies list their expanded trials; a search study lists `num_samples` random
proposals drawn from its space (a stand-in for what the sampler will propose; with a
scheduler many stop early, so the total is an upper bound); an onset study lists its
first step and the worst case of the whole design within its budget (`plan["onset"]`). Times come from
`search_spaces.cost`.

`resweep run` asks here too: the order of its trials (`longest_first`, by `trial_work`),
the epochs of a study's trials (`study_epochs`), and `format_duration` for its lines.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
from typing import Any

from models.config import ConfigError
from search_spaces.cost import (Calibration, calibrate, default_threads, estimate,
                                gpu_calibration, trial_macs, wall_seconds)
from search_spaces.names import format_value
from search_spaces.onset import design_of, trial_for
from search_spaces.search import InfeasibleParams, search_space, trial_from_params
from search_spaces.study import Study, expand_study
from workers.config import TrialConfig

_SEARCH_DRAW_ATTEMPTS = 50  # proposals tried per sample before giving up on a feasible one


def plan_study(study: Study, cpus: int | None = None, gpus: int | None = None,
               refresh_calibration: bool = False,
               gpu_memory_bytes: int | None = None) -> dict[str, Any]:
    """The plan as JSON-ready data: trials, totals and the cost model used.

    For a GPU study it also estimates each trial's GPU memory and checks that the trials
    sharing one GPU fit (`workers.memory`): in `gpu_memory_bytes`, else in this machine's
    first GPU; with neither, the estimates are shown without a verdict.
    """
    trials, cells, note = _trials_of(study)
    uses_gpu = study.resources.gpu > 0
    packing = _gpu_packing(trials, gpu_memory_bytes) if uses_gpu else None
    calibrations: dict[str, Calibration] = {}
    rows = []
    measured: dict[tuple, Calibration] = {}  # refresh each (device, threads) only once
    default = functools.cache(default_threads)   # once per plan, not once per trial
    costs: dict[tuple, tuple[TrialConfig, Any]] = {}  # holds the trial: ids stay unique
    share = _share_text(study)
    works: list[tuple] = []     # each row's estimate (its key in costs)
    for trial, cell in zip(trials, cells):
        stats = study.model_stats(trial.model)
        calibration = trial_calibration(trial, measured, refresh_calibration, default)
        key = _calibration_key(trial, default)
        calibrations[f"{calibration.device}/threads={calibration.threads}"] = calibration
        # The seeds of a cell share their data, train and resources objects: one estimate.
        same_work = (id(trial.data), id(trial.train), id(trial.resources), stats.macs,
                     key)
        if same_work not in costs:
            costs[same_work] = (trial, estimate(trial, stats.macs, calibration))
        cost = costs[same_work][1]
        works.append(same_work)
        rows.append({
            "name": trial.name, "trial_id": trial.trial_id, "seed": trial.seed,
            "params": cell, "param_count": stats.params, "macs": stats.macs,
            "iterations": cost.iterations, "epochs": cost.epochs,
            "train_images": cost.train_images, "eval_images": cost.eval_images,
            "est_seconds": round(cost.seconds, 1),
            "device_share": share,
            **({"est_gpu_memory_bytes": packing.per_trial_bytes.get(trial.name)}
               if packing else {}),
            "config": trial.to_dict()})
    slots, machine = _slots(study, cpus, gpus)
    wall = wall_seconds([r["est_seconds"] for r in rows], slots)
    device_hours = math.fsum(device_hours_of(cost) for _, cost in
                             (costs[work] for work in works))
    totals = {"trials": len(rows),
              "cpu_hours": 0.0 if uses_gpu else round(device_hours, 3),
              "gpu_hours": round(device_hours, 3) if uses_gpu else 0.0,
              "wall_seconds": round(wall, 1), "concurrency": slots, **machine}
    plan = {"study": study.name, "source": study.source_path,
            "source_hash": study.source_hash, "design": study.design,
            "description": study.description,
            "resources": study.resources.to_dict(), "varied": [k.text for k in
                                                                study.varied_keys],
            "trials": rows, "totals": totals,
            "cost_model": {
                "formula": "seconds = startup + (3 x MACs x trained images + MACs x "
                           "evaluated images) / (MACs per second)",
                "startup_seconds": 5.0,
                "calibrations": [vars(c) for c in calibrations.values()]}}
    if note:
        plan["note"] = note
    if packing is not None:
        plan["gpu_memory"] = {k: v for k, v in packing.to_dict().items()
                              if k != "per_trial_bytes"}
    if study.search is not None:
        plan["search"] = {**study.search.model_dump(), "space": search_space(study)}
    if study.design == "onset":
        plan["onset"] = _onset_totals(study, rows)
    return plan


def _calibration_key(trial: TrialConfig, default=default_threads) -> tuple:
    """Trials with equal keys share a calibration: a GPU trial's graph and precision, a
    CPU trial's threads."""
    if trial.resources.gpu > 0:
        return ("gpu", trial.train.cuda_graph, trial.train.precision)
    return ("cpu", trial.train.threads or default())


def trial_calibration(trial: TrialConfig, measured: dict, refresh: bool = False,
                      default=default_threads) -> Calibration:
    """The calibration `trial` is estimated with, measured once per key in `measured`."""
    key = _calibration_key(trial, default)
    if key not in measured:
        measured[key] = gpu_calibration(trial, refresh) if key[0] == "gpu" else \
            calibrate("cpu", key[1], refresh)
    return measured[key]


def device_hours_of(cost) -> float:
    """Hours of the resource a trial holds (one definition: the plan's totals and the
    onset budget): estimated wall seconds x resources.gpu (GPU trial) or resources.cpu
    (CPU trial) / 3600 (`TrialCost.device_seconds`)."""
    return cost.device_seconds / 3600


def trial_hours(trial: TrialConfig, macs: int, measured: dict) -> float:
    """`device_hours_of` the plan's estimate of `trial` (its forward MACs per image)."""
    return device_hours_of(estimate(trial, macs, trial_calibration(trial, measured)))


def _onset_totals(study: Study, rows: list[dict]) -> dict[str, Any]:
    """An onset study's bounds: the first step (the rows), its budget (trials and/or
    hours, `budget_<device>_hours` when given), the most trials the design can run within
    it and their cost if each took as long as the longest trial of the first step (its
    deepest net; at most the hours budget); and the full grid that answers the question."""
    design = design_of(study)
    worst = design.max_trials()
    longest = max((r["est_seconds"] for r in rows), default=0.0)
    share = study.resources.gpu if study.resources.gpu > 0 else study.resources.cpu
    device = "gpu" if study.resources.gpu > 0 else "cpu"
    hours = worst * longest / 3600 * share
    budget = design.budget
    grid = len(design.depths) * design.spec.seeds.max
    return {"depths": design.depths, "first_step": len(rows),
            "budget": budget.describe(), "budget_trials": budget.trials,
            **({f"budget_{device}_hours": budget.hours} if budget.hours is not None
               else {}),
            "worst_case_trials": worst,
            f"worst_case_{device}_hours": round(hours if budget.hours is None else
                                                min(hours, budget.hours), 3),
            "full_grid_trials": {"plain": grid, "plain_and_residual": 2 * grid}}


def trial_work(study: Study, trial: TrialConfig) -> float:
    """The trial's work in multiply-accumulates (`search_spaces.cost.trial_macs`); 0 when
    its network cannot be counted."""
    try:
        macs = study.model_stats(trial.model).macs
    except ConfigError:
        return 0.0
    return trial_macs(trial, macs)


def longest_first(study: Study, trials: list[TrialConfig]) -> list[TrialConfig]:
    """Trials in order of decreasing work, so the long ones do not start last and leave
    the other slots idle at the end (the study's own order is kept among equals)."""
    return sorted(trials, key=lambda trial: trial_work(study, trial), reverse=True)


def study_epochs(study: Study) -> int | None:
    """Epochs a trial of the study trains for (a scheduler's horizon, the progress ETA);
    None when its trials run a number of iterations. Grid and ablation: the first trial's;
    search and onset: the study's `train` resolved with its recipe (a search space may vary
    it further)."""
    if study.design in ("grid", "ablation"):
        trials = expand_study(study)
        return trials[0].train.epochs if trials else None
    from workers.recipes import resolve_recipe

    train = study.spec.train
    length = {key: value for key, value in (("epochs", train.epochs),
                                            ("iterations", train.iterations))
              if value is not None}
    return resolve_recipe(train.recipe, length).epochs


def _gpu_packing(trials: list[TrialConfig], device_bytes: int | None):
    """workers.memory's estimates and packing verdict, without raising or warning."""
    import warnings

    from workers.memory import check_gpu_packing

    if device_bytes is None:
        import torch

        if torch.cuda.is_available():
            device_bytes = torch.cuda.get_device_properties(0).total_memory
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the verdict is printed with the plan
        return check_gpu_packing(trials, device_bytes, refuse=False)


def _share_text(study: Study) -> str:
    gpu = study.resources.gpu
    if gpu > 0:
        if gpu < 1:
            n = 1 / gpu
            return f"1/{n:g} GPU" if abs(n - round(n)) < 1e-9 else f"{gpu:g} GPU"
        return f"{gpu:g} GPU"
    return f"{study.resources.cpu:g} CPU"


def _slots(study: Study, cpus: int | None, gpus: int | None) -> tuple[int, dict]:
    """Trials at a time: what the machine (or --cpus/--gpus) fits, capped by the study."""
    cpus = cpus or os.cpu_count() or 1
    by_cpu = max(1, math.floor(cpus / study.resources.cpu + 1e-9))
    machine: dict[str, Any] = {"cpus": cpus}
    slots = by_cpu
    if study.resources.gpu > 0:
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count() or 1  # plan for one GPU where there is none
        per_gpu = math.floor(1 / study.resources.gpu + 1e-9) if study.resources.gpu <= 1 \
            else 0
        by_gpu = gpus * per_gpu if per_gpu else int(gpus // study.resources.gpu)
        slots = max(1, by_gpu)
        machine["gpus"] = gpus
        machine["trials_per_gpu"] = per_gpu or None
    if study.max_concurrent:
        slots = min(slots, study.max_concurrent)
    return slots, machine


def _trials_of(study: Study) -> tuple[list[TrialConfig], list[dict], str | None]:
    if study.design == "onset":
        step = design_of(study).decide({})
        trials = [trial_for(study, p) for p in step.points]
        cells = [{"depth": p.depth, "residual": p.residual} for p in step.points]
        return trials, cells, (f"onset: the first step only ({step.reason}); the design "
                               "then bisects, adds seeds and runs residual twins as the "
                               "results decide (see the onset lines)")
    if study.design != "search":
        trials = expand_study(study)
        return trials, [study.cell_values(t) for t in trials], None
    space = search_space(study)
    rng = random.Random(study.search.seed)
    trials, cells = [], []
    for index in range(study.search.num_samples):
        for _ in range(_SEARCH_DRAW_ATTEMPTS):
            params = {k: draw(d, rng) for k, d in space.items()}
            try:
                trial = trial_from_params(study, params, seed=study.seeds[0])
            except InfeasibleParams:
                continue
            trials.append(trial.replace(name=f"sample{index + 1}-{trial.name}"))
            cells.append(params)
            break
    note = (f"search: {study.search.num_samples} random proposals stand in for the "
            f"{study.search.algorithm} sampler's")
    if study.search.scheduler:
        note += "; the scheduler stops many early, so the totals are an upper bound"
    return trials, cells, note


def draw(distribution: dict[str, Any], rng: random.Random):
    """One value from a distribution spec (uniform, or log-uniform with log: true)."""
    kind = distribution["type"]
    if kind == "choice":
        return rng.choice(distribution["values"])
    low, high = distribution["low"], distribution["high"]
    if kind == "int":
        if distribution["log"]:
            return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
        return rng.randrange(low, high + 1, distribution["step"])
    if distribution["log"]:
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    value = rng.uniform(low, high)
    step = distribution.get("step")
    return low + round((value - low) / step) * step if step else value


def format_duration(seconds: float) -> str:
    """A duration for people (plans, progress lines, summaries): 3725 -> '1h02m';
    95 -> '1m35s'; 7 -> '7s' (whole seconds, rounded down; negative counts as 0)."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_count(n: float) -> str:
    """1727962 -> '1.73M'; 40551040 -> '40.6M'; 2.3e9 -> '2.30G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{n:g}"


def format_json(plan: dict[str, Any]) -> str:
    """The plan as JSON (`resweep plan --json`): indented, with one trial per line (a
    10,000-trial plan prints in a fraction of a second: the json module's C encoder
    writes the rows, its Python one only the few indented lines around them)."""
    head = json.dumps({**plan, "trials": []}, indent=2)
    encode = json.JSONEncoder(check_circular=False).encode  # rows are fresh trees
    rows = ",\n".join("    " + encode(row) for row in plan["trials"])
    marker = '\n  "trials": []'  # the top level's key (nested keys are indented deeper)
    return head.replace(marker, '\n  "trials": [\n' + rows + '\n  ]' if rows else marker, 1)


def format_table(plan: dict[str, Any]) -> str:
    """The human-readable plan: header, one row per trial, totals, cost-model note."""
    varied = plan["varied"]
    gpu_memory = "gpu_memory" in plan
    headers = ["name", "trial_id"] + [v.split(".")[-1] for v in varied] + \
        ["params", "MACs", "iters", "est. time"] + (["GPU mem"] if gpu_memory else []) + \
        ["device"]
    rows = []
    for r in plan["trials"]:
        rows.append([r["name"], r["trial_id"]] +
                    [format_value(r["params"].get(v)) for v in varied] +
                    [format_count(r["param_count"]), format_count(r["macs"]),
                     f"{r['iterations']:,}", format_duration(r["est_seconds"])] +
                    ([f"{r['est_gpu_memory_bytes'] / 2**30:.2f} GiB"] if gpu_memory else []) +
                    [r["device_share"]])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    numeric = {"params", "MACs", "iters", "est. time", "GPU mem"}

    def line(cells):
        return "  ".join(c.rjust(w) if headers[i] in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    t = plan["totals"]
    res = plan["resources"]
    out = [f"study {plan['study']} ({plan['source']}): design {plan['design']}, "
           f"{t['trials']} trials, resources cpu {res['cpu']:g} gpu {res['gpu']:g}"]
    if plan.get("description"):
        out.append(f"  {plan['description']}")
    out += ["", line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    hours = f"{t['gpu_hours']:.2f} GPU-hours" if res["gpu"] > 0 else \
        f"{t['cpu_hours']:.2f} CPU-hours"
    where = (f"{t['gpus']} GPU(s) x {t['trials_per_gpu']} trials per GPU"
             if res["gpu"] > 0 and t.get("trials_per_gpu") else f"{t['cpus']} CPUs")
    out += ["", f"total: {t['trials']} trials, {hours}, about "
                f"{format_duration(t['wall_seconds'])} wall time at {t['concurrency']} "
                f"trial(s) at a time ({where})"]
    for c in plan["cost_model"]["calibrations"]:
        threads = f", {c['threads']} thread(s)" if c["threads"] else ""
        out.append(f"cost model: {c['device']}{threads}: {c['macs_per_s'] / 1e9:.1f} "
                   f"GMAC/s training ({c['measured']})")
    if gpu_memory:
        g = plan["gpu_memory"]
        verdict = {"refuse": "DOES NOT FIT", "warn": "tight"}.get(g["verdict"], g["verdict"])
        out.append(f"GPU memory ({verdict}): {g['message']} (estimates: workers/memory.py)")
    if plan.get("note"):
        out.append(f"note: {plan['note']}")
    if "onset" in plan:
        o = plan["onset"]
        device = "gpu" if res["gpu"] > 0 else "cpu"
        hours = f"{o[f'worst_case_{device}_hours']:.2f} {device.upper()}-hours"
        out.append(f"onset: worst case {o['worst_case_trials']} trials (budget "
                   f"{o['budget']}), at most {hours} (each as long as the longest trial "
                   f"above, within the budget); the full grid over the "
                   f"{len(o['depths'])} depths at seeds.max: "
                   f"{o['full_grid_trials']['plain']} plain trials, "
                   f"{o['full_grid_trials']['plain_and_residual']} with residual twins")
    return "\n".join(out)
