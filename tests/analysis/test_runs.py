"""Reading a study back from a real MLflow SQLite store written by the tracking code
(tests/analysis/conftest.py)."""

import pytest

from analysis.runs import load_study_runs, resolve_study
from models.config import ConfigError

STUDY = "runs-test"


@pytest.fixture(scope="module")
def store(analysis_store):
    """The session store's RUNS_STUDY: two `resweep run`s; the first leaves plain-14 seed 0
    failed and resnet-14 seed 1 interrupted; the second reruns exactly those two."""
    first, second = analysis_store.parents[STUDY]
    return analysis_store.uri, first, second


def test_one_row_per_trial_with_parsed_params_and_final_metrics(store, trial_config,
                                                                 fake_trial):
    uri, _, _ = store
    runs = load_study_runs(STUDY, uri)
    trials = runs.trials
    assert len(trials) == 8 and trials["trial_id"].is_unique
    assert (trials["status"] == "finished").all() and len(runs.done) == 8
    plain14 = trials[(trials["depth"] == 14) & ~trials["residual"] & (trials["seed"] == 0)].iloc[0]
    # Params come back typed; the final metric is the last epoch's value.
    assert plain14["model.depth"] == 14 and not plain14["model.residual"]
    assert plain14["model.width"] == 0.5 and plain14["train.epochs"] == 4
    assert plain14["data.root"] is None and plain14["train_error"] == pytest.approx(0.101)
    assert plain14["trial_id"] == trial_config(STUDY, fake_trial(14, False, 0, 0, 0)).trial_id
    assert plain14["label"] == "plain-14" and plain14["series"] == "plain"
    assert plain14["params"] == 14000 and plain14["mlflow_status"] == "FINISHED"
    # Plain nets have no shortcut ("none"; this store's writer logs it, older ones "A").
    assert plain14["shortcut"] == plain14["model.shortcut"] == "none"
    assert set(runs.varying) == {"model.depth", "model.residual", "model.shortcut"}


def test_reruns_are_deduplicated_and_the_latest_parent_is_used(store):
    uri, _, second = store
    runs = load_study_runs(STUDY, uri)
    assert runs.parent_run_id == second and runs.parent_run_name == f"{STUDY}-20261126-110000"
    assert runs.parents == 2   # trials come from both `resweep run`s
    rerun = runs.trials[runs.trials["attempts"] == 2]
    assert sorted(rerun["name"]) == ["plain-14-w0.5-s0", "resnet-14-A-w0.5-s1"]
    assert (rerun["parent_run_id"] == second).all()


def test_an_earlier_parent_can_be_chosen(store):
    uri, first_id, second = store
    first = load_study_runs(STUDY, uri, parent=f"{STUDY}-20261126-100000")
    assert first.parent_run_id == first_id != second and len(first.trials) == 8
    with pytest.raises(ConfigError, match=f"--parent: got 'nope'.*{STUDY}-20261126-110000"):
        load_study_runs(STUDY, uri, parent="nope")


def test_curves_have_every_epoch_of_every_trial(store):
    uri, _, _ = store
    runs = load_study_runs(STUDY, uri)
    curves = runs.curves
    assert len(curves) == 8 * 4 and set(curves["epoch"]) == {1, 2, 3, 4}
    one = runs.trials.iloc[0]
    mine = curves[curves["run_id"] == one["run_id"]].sort_values("epoch")
    assert mine["train_error"].iloc[0] > mine["train_error"].iloc[-1]
    assert mine["train_error"].iloc[-1] == pytest.approx(one["train_error"])
    assert {"test_error", "val_error", "lr", "train_loss"} <= set(curves.columns)


def test_probes_and_study_text(store):
    uri, _, _ = store
    runs = load_study_runs(STUDY, uri)
    probes = runs.probes(runs.trials.iloc[0]["run_id"])
    assert list(probes) == ["layer_responses", "gradient_norms"]
    assert len(probes["layer_responses"]) == 1 + 2 * (8 - 2) // 2  # stem + 2 convs per block
    assert runs.study_text().startswith(f"name: {STUDY}")


def test_missing_experiment_names_the_store_and_what_is_there(store):
    uri, _, _ = store
    with pytest.raises(ConfigError) as err:
        load_study_runs("no-such-study", uri)
    assert "no-such-study" in str(err.value) and uri in str(err.value)
    assert STUDY in str(err.value)


def test_missing_store_is_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'nothing.db'}"
    with pytest.raises(ConfigError, match="no MLflow store at"):
        load_study_runs(STUDY, uri)
    assert not (tmp_path / "nothing.db").exists()


def test_study_argument_is_a_file_or_a_name(tmp_path):
    study_file = tmp_path / "mine.yaml"
    study_file.write_text((
        "name: from-the-file\ndesign: grid\nspace: {depth: [20, 32]}\n"))
    # A file gives the `name` inside it (not the file's stem) and the file itself.
    assert resolve_study(str(study_file)) == ("from-the-file", study_file)
    assert resolve_study("from-the-file") == ("from-the-file", None)
    with pytest.raises(ConfigError, match="no study file"):
        resolve_study(str(tmp_path / "missing.yaml"))
