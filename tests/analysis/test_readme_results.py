"""`make readme-results`'s rewriting step (analysis/readme_results.py) on a small real
MLflow store: the demo study's real trials (3 depths x plain/residual x 3 seeds) written
through `StudyTracker`, as
`resweep run` writes them, with known final errors. The demo run itself is
tests/test_demo.py's job (slow); this checks that what the README, the figure and the
study comment say is what the store holds, and that the committed README and study file
carry the markers the rewriting needs."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import pytest

from analysis.readme_results import (END, START, readme_block, regenerate, replace_block,
                                     results_table, rewrite_study_comment)
from analysis.runs import load_study_runs
from orchestrator.tracking import StudyTracker
from search_spaces import expand_study, load_study

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "search_spaces" / "degradation-quick.yaml"
# (depth, residual) -> final (training error, test error) of seeds 0, 1 and 2: plain nets
# degrade from 44 layers on, their residual twins do not.
FINAL = {(8, False): ((0.170, 0.18), (0.172, 0.18), (0.174, 0.18)),
         (20, False): ((0.152, 0.16), (0.156, 0.17), (0.154, 0.165)),
         (44, False): ((0.220, 0.23), (0.226, 0.24), (0.232, 0.235)),
         (8, True): ((0.160, 0.17), (0.162, 0.17), (0.164, 0.17)),
         (20, True): ((0.115, 0.13), (0.119, 0.13), (0.117, 0.13)),
         (44, True): ((0.110, 0.12), (0.112, 0.13), (0.114, 0.125))}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The demo study's trials in a fresh SQLite store, all epochs of each, all finished."""
    root = tmp_path_factory.mktemp("readme-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    study = load_study(STUDY)
    tracker = StudyTracker.open(uri, study.name)
    tracker.start_study(study.name, study_hash="0" * 12, study_text=STUDY.read_text(),
                        version="test")
    for trial in expand_study(study):
        train, test = FINAL[(trial.model.depth, trial.model.residual)][trial.seed]
        run_id, _ = tracker.start_trial(trial)
        epochs = trial.train.epochs
        for epoch in range(1, epochs + 1):
            metrics = {"train_error": train + 0.1 * (epochs - epoch), "train_loss": 1.0 / epoch}
            if epoch == epochs:
                metrics["test_error"] = test
            tracker.log_epoch(run_id, metrics, epoch, {})
        tracker.end_trial(run_id, "finished")
    tracker.end_study("finished", {})
    return load_study_runs(study.name, uri)


def t_half_width(values) -> float:
    """95% t half-width (pp) of the mean of three values: t(0.975, 2) = 4.303."""
    return 100 * 4.303 * statistics.stdev(values) / math.sqrt(len(values))


def test_table_rows_are_cells_with_seed_means_and_t_intervals(demo_runs):
    from analysis.findings import compute_findings

    lines = results_table(compute_findings(demo_runs.trials)).splitlines()
    assert lines[2:] == [
        "| plain-8 | 3 | 17.2% ± 0.5 | 18.0% |", "| plain-20 | 3 | 15.4% ± 0.5 | 16.5% |",
        "| plain-44 | 3 | **22.6% ± 1.5** | 23.5% |", "| ResNet-8 | 3 | 16.2% ± 0.5 | 17.0% |",
        "| ResNet-20 | 3 | 11.7% ± 0.5 | 13.0% |", "| ResNet-44 | 3 | **11.2% ± 0.5** | 12.5% |"]
    assert [round(t_half_width([train for train, _ in FINAL[(depth, False)]]), 1)
            for depth in (8, 20, 44)] == [0.5, 0.5, 1.5]


def test_readme_block_states_onset_fix_their_tests_and_verdicts(demo_runs):
    from analysis.findings import compute_findings
    from scipy import stats

    block = " ".join(readme_block(compute_findings(demo_runs.trials)).split())

    def welch(a, b):
        """(95% half-width in pp, one-sided p) of mean(a) - mean(b), from scipy."""
        low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        p = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
        return 100 * (high - low) / 2, p

    def train(depth, residual):
        return [train for train, _ in FINAL[(depth, residual)]]

    # onset: plain-44 over plain-20 (the larger of its two gaps: 8 -> 44 is +5.4 pp); its
    # p Holm-adjusted over the three depth pairs (20-8, 44-8, 44-20), computed here by hand.
    ci, p = welch(train(44, False), train(20, False))
    pairs = sorted(welch(train(a, False), train(b, False))[1]
                   for a, b in ((20, 8), (44, 8), (44, 20)))
    steps = [min(1.0, (3 - i) * q) for i, q in enumerate(pairs)]
    adjusted = max(steps[:pairs.index(p) + 1])
    assert (f"degradation onset at depth 44, +7.2 pp ± {ci:.1f} over depth 20, one-sided "
            f"Welch p = {p:.2g}, Holm-adjusted p = {adjusted:.2g} over 3 depth pairs)") in block
    ci, p = welch(train(44, False), train(44, True))
    assert (f"its residual twin does not (+11.4 pp ± {ci:.1f} in its favour, one-sided Welch "
            f"p = {p:.2g}): the report's claims table marks both claims *supported*.") in block


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
    assert "| plain-44 | 3 | **22.6% ± 1.5** | 23.5% |" in text
    assert text.count(START) == text.count(END) == 1
    assert text.split(END, 1)[1] == (REPO / "README.md").read_text().split(END, 1)[1]
    comment = study.read_text().split("\nname:", 1)[0]
    assert ("mean of 3 seed(s), plain-8 17.2%, plain-20 15.4%, plain-44 22.6%, ResNet-8 "
            "16.2%, ResNet-20 11.7%, ResNet-44 11.2%") in \
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
