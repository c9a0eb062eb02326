"""The design views on real tiny studies (`tiny_ablation`, `tiny_grid`, `tiny_search`:
run and reported through the CLI), checked against the numbers MLflow holds; plus Holm
and the rounding of printed gaps on hand-computed numbers.

The tiny studies train for one epoch on 384 images: their errors are near chance and the
verdicts mean nothing; what is tested is that every number the views print is the one
computed from the runs in MLflow, and that each view has the rows it must have.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from mlflow.tracking import MlflowClient

from analysis.ablation import ablation_effects
from analysis.cells import pp_gap, rounded_gap
from analysis.findings import find_onset
from analysis.grid_map import depth_factor_map
from analysis.pareto import non_dominated, pareto_table
from analysis.results import read_cells_table
from analysis.runs import load_study_runs
from analysis.search_view import search_view
from analysis.stats import holm
from analysis.store import Result, Tag, ablation_tag, claim_tag
from search_spaces import expand_study, load_study

pytestmark = pytest.mark.slow


def mlflow_children(study) -> tuple[object, list]:
    """(parent run, child runs) of the tiny study, straight from MLflow."""
    client = MlflowClient(study.uri)
    experiment = client.get_experiment_by_name(study.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags[Tag.KIND] == "study")
    return parent, [r for r in runs if r.data.tags[Tag.KIND] == "trial"]


def mean(values) -> float:
    return sum(values) / len(values)


# ---- statistics on hand-computed numbers ------------------------------------------------

def test_holm_against_a_hand_computation():
    # Sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> max 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])   # capped at 1
    assert holm([]) == []


def test_onset_p_values_are_holm_adjusted_over_the_depth_pairs():
    values = {20: [0.100, 0.102, 0.098], 32: [0.130, 0.128, 0.132], 44: [0.15, 0.152, 0.148]}
    onset = find_onset(values)
    raw = {(d, s): c.p_value for d, s, c in onset.checked}
    assert len(raw) == 3
    ordered = sorted(raw.values())
    hand = [min(1, 3 * ordered[0]), min(1, max(3 * ordered[0], 2 * ordered[1])),
            min(1, max(3 * ordered[0], 2 * ordered[1], ordered[2]))]
    assert sorted(onset.adjusted.values()) == pytest.approx(hand)
    # The onset pair is significant after the correction, and the report says so.
    assert onset.depth == 32 and onset.p_adjusted < 0.05
    assert "Holm-adjusted p" in onset.describe() and "Holm" in onset.test


def test_a_pair_significant_only_before_the_correction_is_no_onset():
    # 32 and 44 vs 20: one-sided p = 0.037 and 0.024 alone, but three pairs are compared:
    # Holm gives 0.074 and 0.073, so no onset (uncorrected, 32 would have been one).
    values = {20: [0.100, 0.104, 0.098], 32: [0.106, 0.110, 0.104], 44: [0.107, 0.111, 0.105]}
    onset = find_onset(values)
    for pair in ((32, 20), (44, 20)):
        raw = next(c for d, s, c in onset.checked if (d, s) == pair)
        assert raw.p_value < 0.05 and raw.greater and onset.adjusted[pair] >= 0.05
    assert onset.depth is None


def test_printed_gaps_agree_with_the_rounded_numbers():
    # 24.14% and 15.36% print as 24.1% and 15.4%: the gap is +8.7 pp, not +8.8 pp.
    assert pp_gap(0.2414, 0.1536) == "+8.7 pp"
    assert rounded_gap(0.2414, 0.1536) == pytest.approx(0.087)


# ---- ablation ----------------------------------------------------------------------------

def test_ablation_table_has_one_row_per_variant_with_mlflows_differences(tiny_ablation):
    parent, children = mlflow_children(tiny_ablation)
    # Means per cell from MLflow's own records: (residual, shortcut param) -> errors.
    cells = defaultdict(lambda: defaultdict(list))
    for run in children:
        key = (run.data.params["model.residual"], run.data.params["model.shortcut"])
        for metric in ("train_error", "test_error"):
            cells[key][metric].append(run.data.metrics[metric])
    assert set(cells) == {("True", "A"), ("True", "B"), ("True", "C"), ("False", "none")}
    base = cells[("True", "A")]

    runs = load_study_runs(tiny_ablation.name, tiny_ablation.uri)
    ablation = ablation_effects(runs.done, runs.study_file())
    assert ablation.baseline == "resnet-8 A" and ablation.baseline_n == 2
    changes = {(v.factor, v.baseline_value, v.value): v for v in ablation.variants}
    assert set(changes) == {("residual", "true", "false"), ("shortcut", "A", "B"),
                            ("shortcut", "A", "C")}
    for (factor, _, value), v in changes.items():
        cell = cells[("False", "none")] if factor == "residual" else cells[("True", value)]
        assert v.n == 2
        assert v.train_diff == pytest.approx(mean(cell["train_error"]) - mean(base["train_error"]))
        assert v.test_diff == pytest.approx(mean(cell["test_error"]) - mean(base["test_error"]))
        assert v.test_ci > 0 and v.p_adjusted is not None
    # The report prints each row with the difference of the printed means, and the parent
    # run carries each verdict.
    summary = (tiny_ablation.report_dir / "summary.md").read_text()
    assert "## Ablation: each variant against the baseline (resnet-8 A)" in summary
    tags = MlflowClient(tiny_ablation.uri).get_run(parent.info.run_id).data.tags
    for (factor, _, value), v in changes.items():
        row = next(line for line in summary.splitlines()
                   if line.startswith(f"| {factor}: ") and f"-> {value} |" in line)
        cell = cells[("False", "none")] if factor == "residual" else cells[("True", value)]
        printed = pp_gap(mean(cell["test_error"]), mean(base["test_error"]), v.test_ci)
        assert f"| {printed} |" in row
        assert tags[ablation_tag(factor, value)].startswith(v.verdict)
    assert (tiny_ablation.report_dir / "figures" / "6-ablation-effects.png").is_file()
    assert "6-ablation-effects.png" in tiny_ablation.report_out


def test_plain_nets_log_no_shortcut_and_keep_their_trial_ids(tiny_ablation):
    _, children = mlflow_children(tiny_ablation)
    expected = {t.name: t.trial_id for t in expand_study(load_study(tiny_ablation.path))}
    for run in children:
        assert run.data.tags[Tag.TRIAL_ID] == expected[run.data.tags[Tag.NAME]]
        if run.data.params["model.residual"] == "False":
            assert run.data.params["model.shortcut"] == "none"
        # The network's size: tags, not metrics.
        assert float(run.data.tags[Tag.PARAM_COUNT]) > 0 and "params" not in run.data.metrics


# ---- 2-D degradation map ------------------------------------------------------------------

def test_depth_by_width_map_has_a_row_per_width_with_mlflows_gaps(tiny_grid):
    _, children = mlflow_children(tiny_grid)
    error = {(float(r.data.params["model.width"]), int(r.data.params["model.depth"]),
              r.data.params["model.residual"]): r.data.metrics["train_error"] for r in children}
    runs = load_study_runs(tiny_grid.name, tiny_grid.uri)
    grid = depth_factor_map(runs.done)
    assert grid.factor == "model.width" and grid.depths == [8, 14]
    assert [r.value for r in grid.rows] == [0.25, 0.5]
    for row in grid.rows:
        for depth in (8, 14):
            plain, residual = error[(row.value, depth, "False")], error[(row.value, depth, "True")]
            assert row.gap[depth][0] == pytest.approx(rounded_gap(plain, residual))
        # The row's onset is the onset test on that width's plain nets alone.
        alone = find_onset({d: [error[(row.value, d, "False")]] for d in (8, 14)})
        assert row.onset.depth == alone.depth
    summary = (tiny_grid.report_dir / "summary.md").read_text()
    section = summary.split("## Degradation map over depth x width")[1].split("\n## ")[0]
    assert "| width | plain onset | gap at depth 8 | gap at depth 14 |" in section
    assert [line.split(" | ")[0] for line in section.splitlines()
            if line.startswith("| 0.")] == ["| 0.25", "| 0.5"]
    for name in ("7-depth-factor-map", "8-depth-factor-curves"):
        assert (tiny_grid.report_dir / "figures" / f"{name}.png").is_file()


def test_parent_run_carries_the_cells_table_and_headline(tiny_grid):
    parent, children = mlflow_children(tiny_grid)
    runs = load_study_runs(tiny_grid.name, tiny_grid.uri)
    table = read_cells_table(runs)
    assert len(table) == 8 and set(table["n"]) == {1}
    by_label = {r["label"]: r for _, r in table.iterrows()}
    for run in children:
        width, depth = float(run.data.params["model.width"]), run.data.params["model.depth"]
        kind = "resnet" if run.data.params["model.residual"] == "True" else "plain"
        row = by_label[f"{kind}-{depth} width={width:g}"]
        assert row["train_error_mean"] == pytest.approx(run.data.metrics["train_error"])
    fresh = MlflowClient(tiny_grid.uri).get_run(parent.info.run_id)
    assert fresh.data.metrics[Result.CELLS] == 8
    assert fresh.data.tags[claim_tag("degradation")] in ("supported", "not supported")
    logged = json.loads(fresh.data.tags[Result.LOGGED_ARTIFACTS])
    assert {"path": Result.CELLS_TABLE, "type": "table"} in logged
    best = min(table["test_error_mean"])
    assert fresh.data.metrics[Result.BEST_ERROR] == pytest.approx(best)


def test_pareto_set_is_the_non_dominated_trials(tiny_grid):
    _, children = mlflow_children(tiny_grid)
    points = {r.data.tags[Tag.NAME]: (r.data.metrics["test_error"],
                                      float(r.data.tags[Tag.PARAM_COUNT]),
                                      float(r.data.tags[Tag.MACS]),
                                      r.data.metrics["elapsed_s"]) for r in children}

    def dominated(name, axes) -> bool:
        mine = [points[name][i] for i in axes]
        return any(all(o <= m for o, m in zip(theirs, mine)) and theirs != mine
                   for other in points if other != name
                   for theirs in [[points[other][i] for i in axes]])

    runs = load_study_runs(tiny_grid.name, tiny_grid.uri)
    table, metric, skipped = pareto_table(runs.done)
    assert metric == "test_error" and skipped == 0 and len(table) == 8
    for _, t in table.iterrows():
        assert t["front_params"] == (not dominated(t["name"], (0, 1)))
        assert t["front_macs"] == (not dominated(t["name"], (0, 2)))
        assert t["front_elapsed_s"] == (not dominated(t["name"], (0, 3)))
        assert t["front_all"] == (not dominated(t["name"], (0, 1, 2, 3)))
    assert table["front_params"].any()
    assert non_dominated([(1, 2), (2, 1), (2, 2), (1, 2)]) == [True, True, False, True]


# ---- search -------------------------------------------------------------------------------

def test_search_view_lists_the_best_trial_mlflow_holds(tiny_search):
    parent, children = mlflow_children(tiny_search)
    scored = [r for r in children if r.data.tags[Tag.STATUS] in ("finished", "stopped")]
    best_value = min(r.data.metrics["val_error"] for r in scored)
    runs = load_study_runs(tiny_search.name, tiny_search.uri)
    view = search_view(runs, runs.study_file())
    assert (view.metric, view.mode, view.scheduler) == ("val_error", "min", "asha")
    assert view.best["run_id"] == parent.data.tags[Tag.BEST_RUN_ID]
    assert view.best["value"] == pytest.approx(best_value)
    assert view.best["proposal"] == json.loads(
        next(r for r in children if r.info.run_id == view.best["run_id"])
        .data.tags[Tag.SEARCH_PARAMS])
    # History: trials in start order, best so far never gets worse.
    assert list(view.trials["number"]) == list(range(1, len(children) + 1))
    history = view.trials["best_so_far"].dropna().tolist()
    assert history == sorted(history, reverse=True) and history[-1] == pytest.approx(best_value)
    stopped = {r.data.tags[Tag.NAME] for r in children if r.data.tags[Tag.STATUS] == "stopped"}
    assert set(view.trials[view.trials["status"] == "stopped"]["name"]) == stopped
    summary = (tiny_search.report_dir / "summary.md").read_text()
    assert f"best trial: #{view.best['number']} {view.best['name']}" in summary
    rows = {line.split(" | ")[1]: line for line in summary.splitlines()
            if line.startswith("| ") and " | " in line and line.split(" | ")[1] in
            {r.data.tags[Tag.NAME] for r in children}}
    assert len(rows) == len(children)
    for name, row in rows.items():
        assert ("| stopped early (asha) |" in row) == (name in stopped)
    assert "FanovaImportanceEvaluator" in summary


def test_search_importance_uses_optunas_evaluator_on_the_finished_trials(tiny_search):
    runs = load_study_runs(tiny_search.name, tiny_search.uri)
    view = search_view(runs, runs.study_file())
    finished = view.trials[view.trials["status"] == "finished"]
    if len(finished) < 3:
        assert view.importance is None and "needs at least 3" in view.importance_note
        return
    assert view.importance and set(view.importance) <= {"depth", "shortcut", "train.lr"}
    assert sum(view.importance.values()) == pytest.approx(1.0)
    assert f"on the {len(finished)} finished trials" in view.importance_note
    for name in ("9-search-history", "11-search-parallel-coordinates"):
        assert (tiny_search.report_dir / "figures" / f"{name}.png").is_file()


def test_report_links_open_the_ui_url_in_the_training_runs_view(tiny_search):
    html = (tiny_search.report_dir / "report.html").read_text()
    _, children = mlflow_children(tiny_search)
    for run in children:
        assert (f"{tiny_search.ui_url}/#/experiments/") in html
        assert f"/runs/{run.info.run_id}?workflowType=machine_learning" in html
    assert "http://127.0.0.1:5000" not in html
    assert f"MLflow:  {tiny_search.ui_url}/#/experiments/" in tiny_search.report_out


def test_a_ui_url_that_is_not_http_exits_2(capsys):
    from orchestrator.cli import main as resweep

    with pytest.raises(SystemExit) as exit_info:
        resweep(["report", "some-study", "--ui-url", "ftp://127.0.0.1:5001"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--ui-url: got 'ftp://127.0.0.1:5001'; an http(s) address" in err
