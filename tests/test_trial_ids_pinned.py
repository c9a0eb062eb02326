"""Every shipped study's trial ids, and the MLflow param names of a trial, are pinned.

`trial_id` is how a rerun recognises finished work in an existing MLflow store, and the
flattened param names are what the analysis and the MLflow UI read. A refactor that
changes either silently orphans every store written before it, so both are compared with
the values recorded in tests/data/trial_ids.json (written once, before the structural
clean-up of issue 11). Regenerate only for a deliberate, documented break:
`python -m tests.test_trial_ids_pinned > tests/data/trial_ids.json`.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import search_spaces
from search_spaces import expand_study, load_study, trial_from_params

PINNED = Path(__file__).parent / "data" / "trial_ids.json"
STUDIES = Path(search_spaces.__file__).parent
SEARCH_FLOATS = (0.02, 0.1, 0.3)  # sample points of a float distribution


def _search_trials(study):
    """Trials of a search study at every choice combination (floats at SEARCH_FLOATS)."""
    axes = {}
    for name, dist in search_spaces.search_space(study).items():
        if dist["type"] == "choice":
            axes[name] = dist["values"]
        elif dist["type"] == "int":
            axes[name] = [dist["low"], dist["high"]]
        else:
            axes[name] = [v for v in SEARCH_FLOATS if dist["low"] <= v <= dist["high"]]
    trials = []
    for values in itertools.product(*axes.values()):
        try:
            trials.append(trial_from_params(study, dict(zip(axes, values)), seed=0))
        except search_spaces.InfeasibleParams:
            continue
    return trials


def _onset_trials(study):
    """Trials of an onset study at every depth of its range, plain and residual, seed 0."""
    from search_spaces.onset import Point, design_of, trial_for

    return [trial_for(study, Point(depth, residual, 0))
            for depth in design_of(study).depths for residual in (False, True)]


def current_ids() -> dict:
    from orchestrator.tracking import trial_params

    out: dict = {"studies": {}, "params": None}
    for path in sorted(STUDIES.glob("*.yaml")):
        study = load_study(path)
        trials = _search_trials(study) if study.design == "search" else \
            _onset_trials(study) if study.design == "onset" else expand_study(study)
        out["studies"][path.name] = {t.name: t.trial_id for t in trials}
        if out["params"] is None and trials:
            out["params"] = sorted(trial_params(trials[0]))
    return out


def test_trial_ids_and_param_names_are_unchanged():
    pinned = json.loads(PINNED.read_text())
    now = current_ids()
    assert sorted(now["studies"]) == sorted(pinned["studies"]), "shipped studies changed"
    for name, ids in pinned["studies"].items():
        assert now["studies"][name] == ids, f"{name}: trial ids changed"
    assert sum(len(v) for v in pinned["studies"].values()) > 50
    assert now["params"] == pinned["params"]


if __name__ == "__main__":
    print(json.dumps(current_ids(), indent=1, sort_keys=True))
