"""`make readme-results`'s rewriting step (analysis/readme_results.py) on a small real
MLflow store: the demo study's four real trials written through `StudyTracker`, as
`resweep run` writes them, with known final errors. The demo run itself is
tests/test_demo.py's job (slow); this checks that what the README, the figure and the
study comment say is what the store holds, and that the committed README and study file
carry the markers the rewriting needs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analysis.readme_results import (END, START, readme_block, regenerate, replace_block,
                                     results_table, rewrite_study_comment)
from analysis.runs import load_study_runs
from orchestrator.tracking import StudyTracker
from search_spaces import expand_study, load_study

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "search_spaces" / "degradation-quick.yaml"
# (depth, residual) -> final training error, test error: degradation and its fix.
FINAL = {(20, False): (0.1537, 0.16), (56, False): (0.241, 0.25),
         (20, True): (0.117, 0.13), (56, True): (0.123, 0.135)}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The demo study's trials in a fresh SQLite store, 5 epochs each, all finished."""
    root = tmp_path_factory.mktemp("readme-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    study = load_study(STUDY)
    tracker = StudyTracker.open(uri, study.name)
    tracker.start_study(study.name, study_hash="0" * 12, study_text=STUDY.read_text(),
                        version="test")
    for trial in expand_study(study):
        train, test = FINAL[(trial.model.depth, trial.model.residual)]
        run_id, _ = tracker.start_trial(trial)
        for epoch in range(1, 6):
            metrics = {"train_error": train + 0.1 * (5 - epoch), "train_loss": 1.0 / epoch}
            if epoch == 5:
                metrics["test_error"] = test
            tracker.log_epoch(run_id, metrics, epoch, {})
        tracker.end_trial(run_id, "finished")
    tracker.end_study("finished", {})
    return load_study_runs(study.name, uri)


def test_table_has_every_trial_with_its_final_errors(demo_runs):
    lines = results_table(demo_runs).splitlines()
    assert lines[2:] == ["| plain-20 | 15.4% | 16.0% |", "| plain-56 | **24.1%** | 25.0% |",
                         "| ResNet-20 | 11.7% | 13.0% |", "| ResNet-56 | **12.3%** | 13.5% |"]


def test_readme_block_states_onset_fix_and_verdicts(demo_runs):
    from analysis.findings import compute_findings

    block = " ".join(readme_block(demo_runs, compute_findings(demo_runs.trials)).split())
    assert ("degradation onset at depth 56, +8.7 pp over depth 20), its residual twin does "
            "not (+11.8 pp in its favour): the report's claims table marks both claims "
            "*supported*.") in block


def test_replace_block_keeps_everything_outside_the_markers():
    text = f"intro\n{START}\nold table\n{END}\n\nrest\n"
    assert replace_block(text, "new\n") == f"intro\n{START}\nnew\n{END}\n\nrest\n"
    with pytest.raises(ValueError, match="markers"):
        replace_block("no markers here", "new")


def test_study_comment_rewrite_changes_comments_only():
    text = STUDY.read_text()
    new = rewrite_study_comment(text, ["# Measured: new numbers"])
    assert "# Measured: new numbers\nname: degradation-quick\n" in new
    assert [l for l in new.splitlines() if not l.startswith("#")] == \
        [l for l in text.splitlines() if not l.startswith("#")]


def test_regenerate_rewrites_readme_study_comment_and_figure(demo_runs, tmp_path):
    readme, study = tmp_path / "README.md", tmp_path / "degradation-quick.yaml"
    shutil.copy(REPO / "README.md", readme)
    shutil.copy(STUDY, study)
    (tmp_path / "example").mkdir()
    regenerate(demo_runs, tmp_path / "report", readme, study, tmp_path / "example")

    text = readme.read_text()
    assert "| plain-56 | **24.1%** | 25.0% |" in text
    assert text.count(START) == text.count(END) == 1
    assert text.split(END, 1)[1] == (REPO / "README.md").read_text().split(END, 1)[1]
    comment = study.read_text().split("\nname:", 1)[0]
    assert "plain-20 15.4%, plain-56 24.1%, ResNet-20 11.7%, ResNet-56 12.3%" in \
        " ".join(comment.replace("#", " ").split())
    assert [t.trial_id for t in expand_study(load_study(study))] == \
        [t.trial_id for t in expand_study(load_study(STUDY))]
    assert (tmp_path / "example" / "degradation-quick-map.png").read_bytes()[:4] == b"\x89PNG"


def test_shipped_studies_table_names_each_study_s_data_set():
    """README's "The shipped studies" table: one row per search_spaces/*.yaml, its data
    column what the file's data.dataset says."""
    import yaml

    names = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0].endswith(".yaml`"):
            rows[cells[0].strip("`")] = cells
    studies = sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml"))
    assert sorted(rows) == studies
    for name in studies:
        dataset = yaml.safe_load((REPO / "search_spaces" / name).read_text())["data"]["dataset"]
        assert rows[name][2] == names[dataset], (name, rows[name])
        assert ("needs CIFAR-10" in rows[name][3]) == (dataset == "cifar10"), rows[name]
