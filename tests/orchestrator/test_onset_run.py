"""One real onset study on Fashion-MNIST through `resweep run` and `resweep report`: the
decisions the run made, the trials MLflow holds and the trace the report replays agree
(not where the onset is: a few hundred images and one epoch decide nothing about depth).

The study runs twice: with a budget that the first step fills, then with a larger one
(`--set`; with an hours budget too), so the second run resumes the design from what
MLflow holds: it makes the same first decision again from the same results and runs no
trial twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from tests.orchestrator.conftest import REPO

STUDY = {
    "name": "onset-tiny",
    "data": {"dataset": "fashion-mnist", "train_size": 256, "val_size": 128,
             "test_size": 128, "augment": False},
    "train": {"recipe": "cosine", "epochs": 1, "batch_size": 64, "lr": 0.05, "threads": 1},
    "model": {"family": "cifar", "block": "basic", "shortcut": "A", "width": 0.25},
    "design": "onset",
    "onset": {"depth": {"low": 8, "high": 20}, "seeds": {"start": 2, "max": 3},
              "coarse": 2, "budget": {"trials": 8}},
    "resources": {"cpu": 1},
}


def _resweep(cwd, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def onset_store(tmp_path_factory):
    """The study run with budget 4 (the coarse step), then 8 (and 1 CPU-hour), then
    reported."""
    root = tmp_path_factory.mktemp("onset")
    (root / "onset-tiny.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    first = _resweep(root, "run", "onset-tiny.yaml", "--set", "onset.budget.trials=4")
    # Also an hours budget (ample: the trials run out first), so the run, the searcher
    # Tune holds and the report's replay all carry the plan's cost model.
    second = _resweep(root, "run", "onset-tiny.yaml", "--set", "onset.budget.cpu_hours=1.0")
    report = _resweep(root, "report", "onset-tiny.yaml", "--out", "report")
    return root, first, second, report


def test_first_run_spends_its_budget_on_the_coarse_step(onset_store):
    _, first, _, _ = onset_store
    assert first.returncode == 0, first.stderr[-3000:]
    assert "4 trials to run" in first.stdout
    assert "onset step 1 (coarse, 4 trials): coarse start: depths 8, 20, 2 seeds each" \
        in first.stdout
    # Depths 8, 14, 20: after the coarse step (8 and 20) the design bisects or adds seeds,
    # neither fits in 4 trials, unless depth 20 is clearly not degraded.
    stops = re.findall(r"onset stop \(([a-z-]+)\)", first.stdout)
    assert stops in (["budget"], ["no-degradation"])


def test_rerun_resumes_from_mlflow_and_runs_no_trial_twice(onset_store):
    root, first, second, _ = onset_store
    assert second.returncode == 0, second.stderr[-3000:]
    from analysis.runs import load_study_runs

    runs = load_study_runs("onset-tiny", f"sqlite:///{root / 'mlflow.db'}")
    assert Counter(runs.trials["attempts"]) == {1: len(runs.trials)}   # no trial twice
    # The second run makes the first run's decisions again from the same results.
    lines = [line.strip() for line in first.stdout.splitlines() if line.strip().startswith(
        "onset step 1 ")]
    assert lines and lines[0] in second.stdout
    if "onset stop (budget)" in first.stdout:
        done_earlier = re.search(r"(\d+) done earlier", second.stdout)
        assert done_earlier and done_earlier.group(1) == "4"


def test_report_trace_matches_the_trials_and_the_run(onset_store):
    root, _, second, report = onset_store
    assert report.returncode == 0, report.stderr[-3000:]
    from analysis.onset_view import onset_section
    from analysis.runs import load_study_runs
    from search_spaces import load_study
    from search_spaces.onset import trial_for

    runs = load_study_runs("onset-tiny", f"sqlite:///{root / 'mlflow.db'}")
    section = onset_section(runs, runs.study_text(), root / "figures")
    study = load_study(root / "onset-tiny.yaml")
    # Every trial in MLflow is a point of the replayed trace, and the other way round,
    # with the depth, residual and seed the point names.
    by_id = {trial_for(study, p).trial_id: p for p in section.record}
    assert set(by_id) == set(runs.trials["trial_id"])
    for _, row in runs.trials.iterrows():
        point = by_id[row["trial_id"]]
        assert (row["depth"], bool(row["residual"]), row["seed"]) == \
            (point.depth, point.residual, point.seed)
        assert section.record[point] == pytest.approx(row["train_error"])
    assert len(section.record) <= 8 and section.state.final is not None
    # The run printed the decisions it made; the report replays the same ones.
    for number, step in enumerate(section.state.trace, 1):
        assert f"onset step {number} ({step.action}, {len(step.points)} trials): " \
               f"{step.reason}" in second.stdout
    assert f"onset stop ({section.state.final.stop})" in second.stdout
    html = (root / "report" / "report.html").read_text()
    markdown = (root / "report" / "summary.md").read_text()
    assert "<h2>Onset design</h2>" in html and "Decision trace" in html
    assert html.index("<h2>Onset design</h2>") < html.index("<h2>Figures</h2>")
    assert "## Onset design" in markdown
    assert (root / "report" / "figures" / "6-onset-design.png").stat().st_size > 10_000
    assert f"stopped ({section.state.final.stop})" in report.stdout


def test_the_claims_table_is_decided_by_the_design(onset_store):
    """The depth claims the report prints, and the verdict tags it logs on the parent
    run, are the design's result (`analysis.onset_claims`), with the all-pairs rule as a
    cross-check in the evidence."""
    root, _, _, report = onset_store
    from analysis.findings import compute_findings
    from analysis.onset_claims import DESIGN_CLAIMS
    from analysis.onset_view import onset_section
    from analysis.runs import load_study_runs
    from analysis.store import claim_tag

    runs = load_study_runs("onset-tiny", f"sqlite:///{root / 'mlflow.db'}")
    section = onset_section(runs, runs.study_text(), root / "figures")
    by_design = {c.key: c for c in compute_findings(runs.trials, design=section.result()).claims}
    generic = {c.key: c for c in compute_findings(runs.trials).claims}
    tags = runs.client.get_run(runs.parent_run_id).data.tags
    for key in DESIGN_CLAIMS:
        claim = by_design[key]
        assert f"{claim.verdict.upper():<14} {claim.claim}" in report.stdout
        assert tags[claim_tag(key)] == claim.verdict
        assert claim.evidence.endswith("cross-check, all-pairs rule over the same trials: "
                                       f"{generic[key].verdict}"
                                       + (f" ({generic[key].test})"
                                          if generic[key].test != "-" else ""))
    # The design's stop decides the degradation verdict.
    stop = section.state.final.stop
    expected = {"no-degradation": "not supported", "resolution": "supported"}
    if stop in expected:
        assert by_design["degradation"].verdict == expected[stop]


def test_dry_run_says_the_design_has_stopped(onset_store):
    root, _, second, _ = onset_store
    stop = re.search(r"onset stop \(([a-z-]+)\)", second.stdout).group(1)
    dry = _resweep(root, "run", "onset-tiny.yaml", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "onset: worst case 8 trials (budget 8 trials)" in dry.stdout
    assert f"resweep run would start nothing: the onset design stopped ({stop})" in dry.stdout
