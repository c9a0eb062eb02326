"""`resweep run` on a real local Ray with real MLflow stores (SQLite and `mlflow server`).

One Ray for the module (`local_ray`, started once, ~7 s); the command finds it initialised
and uses it as it is. Trials train real networks on 1,024 Fashion-MNIST images.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from orchestrator.cli import main as resweep
from search_spaces import expand_study, load_study

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def max_open_runs(runs) -> int:
    """The most runs open at one instant, from their MLflow start and end times (ms); a run
    ending at the instant another starts does not overlap it."""
    events = sorted([(r.info.start_time, 1) for r in runs] +
                    [(r.info.end_time, -1) for r in runs])
    open_runs, most = 0, 0
    for _, delta in events:
        open_runs += delta
        most = max(most, open_runs)
    return most


def run(study, tmp_path, uri, *extra):
    return resweep(["run", str(study), "--tracking-uri", uri,
                    "--storage", str(tmp_path / "ray_results"), "--quiet", *extra])


@pytest.fixture
def assert_trial_recorded(client_for, steps, per_epoch_keys):
    """assert_trial_recorded(uri, child, parent_id, epochs, trial): the child run records
    the trial in full (tags, params, every epoch's metrics, artifacts)."""
    return lambda *args: _assert_trial_recorded(client_for, steps, per_epoch_keys, *args)


def _assert_trial_recorded(client_for, steps, per_epoch_keys, uri, child, parent_id, epochs,
                           trial):
    tags, params = child.data.tags, child.data.params
    assert tags["mlflow.parentRunId"] == parent_id
    assert tags["resweep.trial_id"] == trial.trial_id
    assert tags["resweep.name"] == trial.name == child.info.run_name
    assert tags["resweep.seed"] == str(trial.seed)
    assert params["model.depth"] == str(trial.model.depth)
    assert params["model.residual"] == str(trial.model.residual)
    for key in ("model.block", "model.shortcut", "model.width", "data.dataset", "train.lr",
                "seed"):
        assert key in params
    for key in per_epoch_keys:  # every epoch once, step = epoch
        assert steps(uri, child.info.run_id, key) == list(range(1, epochs + 1)), key
    # The network's size: tags, not metrics (no chart of a constant).
    assert float(child.data.tags["resweep.params"]) > 0 and float(child.data.tags["resweep.macs"]) > 0
    assert "params" not in child.data.metrics and "macs" not in child.data.metrics
    client = client_for(uri)
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"probes.json", "trial.json"} <= artifacts
    probes = json.loads(open(client.download_artifacts(child.info.run_id, "probes.json")).read())
    assert probes["layer_responses"] and probes["gradient_norms"]
    trial_json = json.loads(open(client.download_artifacts(child.info.run_id,
                                                           "trial.json")).read())
    assert trial_json["trial_id"] == trial.trial_id


def test_grid_two_at_a_time_every_epoch_in_sqlite_then_extend_by_one_cell(
        local_ray, tmp_path, write_study, study_runs, client_for, assert_trial_recorded):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = {"depth": [2, 4], "residual": [False, True]}
    # Half a CPU per trial: all four trials fit on the 2-CPU Ray at once, so only
    # --max-concurrent keeps it to two (checked from the runs' start and end times below).
    study = write_study("grid-local", space=space, resources={"cpu": 0.5})
    assert run(study, tmp_path, uri, "--max-concurrent", "2") == 0

    parents, children = study_runs(uri, "grid-local")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.tags["resweep.study_hash"] == load_study(study).source_hash
    assert parent.data.tags["resweep.trials.finished"] == "4"
    assert client_for(uri).get_experiment_by_name("grid-local").tags[
        "mlflow.experimentKind"] == "custom_model_development"
    trials = {t.trial_id: t for t in expand_study(load_study(study))}
    assert sorted(c.data.tags["resweep.trial_id"] for c in children) == sorted(trials)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["resweep.status"] == "finished"
        assert_trial_recorded(uri, child, parent.info.run_id, 3,
                              trials[child.data.tags["resweep.trial_id"]])
    # --max-concurrent 2: two trials' runs open at the same time, never three (Ray alone
    # would run all four at once; a limit of 1 would never overlap two).
    assert max_open_runs(children) == 2

    # The same command again: everything is done, nothing runs, no new runs.
    assert run(study, tmp_path, uri) == 0
    assert len(study_runs(uri, "grid-local")[1]) == 4

    # Extend the study by one cell (a residual depth-6 net): only that cell runs.
    write_study("grid-local", space={"depth": [2, 4, 6], "residual": [False, True]},
                resources={"cpu": 0.5}, constraints=[{"when": {"depth": 6, "residual": False}, "skip": True}])
    before = {c.info.run_id: c.info.end_time for c in children}
    assert run(study, tmp_path, uri) == 0
    parents, children = study_runs(uri, "grid-local")
    new = [c for c in children if c.info.run_id not in before]
    assert len(parents) == 2 and len(children) == 5 and len(new) == 1
    assert new[0].data.params["model.depth"] == "6"
    assert new[0].data.params["model.residual"] == "True"
    assert new[0].data.tags["mlflow.parentRunId"] == parents[1].info.run_id
    assert {c.info.run_id: c.info.end_time for c in children if c.info.run_id in before} \
        == before  # the finished trials were not touched


def test_tracking_server_and_a_diverged_trial(local_ray, tmp_path, mlflow_server, write_study, mlp,
                                              study_runs, assert_trial_recorded):
    server = mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts",
                           tmp_path / "logs")
    with server:
        # lr 1e4 blows the loss up in the first epoch: recorded as diverged, study goes on.
        study = write_study("grid-server", space={"train.lr": [0.02, 1.0e4]},
                            epochs=2, lr=None, model={**mlp, "depth": 2})
        assert run(study, tmp_path, server.url, "--max-concurrent", "2") == 0
        parents, children = study_runs(server.url, "grid-server")
        assert len(parents) == 1 and len(children) == 2
        by_lr = {c.data.params["train.lr"]: c for c in children}
        trials = {t.trial_id: t for t in expand_study(load_study(study))}
        good, bad = by_lr["0.02"], by_lr["10000.0"]
        assert good.info.status == "FINISHED"
        assert_trial_recorded(server.url, good, parents[0].info.run_id, 2,
                              trials[good.data.tags["resweep.trial_id"]])
        assert bad.data.tags["resweep.status"] == "diverged"
        assert bad.info.status == "FAILED"
        assert bad.data.tags["resweep.diverged_epoch"] == "1"
        assert parents[0].data.tags["resweep.trials.diverged"] == "1"


def test_search_optuna_proposes_asha_stops_some_early(local_ray, tmp_path, write_study, study_runs,
                                                      steps):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = write_study(
        "search-local", epochs=4, design="search", lr=None,
        space={"depth": {"choice": [2, 4, 6]},
               "train.lr": {"float": {"low": 0.001, "high": 0.3, "log": True}}},
        search={"algorithm": "optuna-tpe", "num_samples": 8, "metric": "val_error",
                "mode": "min", "max_concurrent": 2, "seed": 3,
                "scheduler": {"asha": {"max_t": 4, "grace_period": 1,
                                       "reduction_factor": 2}}})
    assert run(study, tmp_path, uri) == 0
    parents, children = study_runs(uri, "search-local")
    assert len(children) == 8
    proposals = [json.loads(c.data.tags["resweep.search_params"]) for c in children]
    assert all(p["depth"] in (2, 4, 6) and 0.001 <= p["train.lr"] <= 0.3 for p in proposals)
    assert len({c.data.tags["resweep.trial_id"] for c in children}) == 8
    statuses = [c.data.tags["resweep.status"] for c in children]
    assert "stopped" in statuses, statuses  # ASHA cut some trials short
    for child in children:
        last = int(child.data.tags["resweep.last_epoch"])
        assert steps(uri, child.info.run_id, "train_error") == list(range(1, last + 1))
        if child.data.tags["resweep.status"] == "stopped":
            assert child.info.status == "FINISHED" and last < 4
        else:
            assert child.data.tags["resweep.status"] in ("finished", "diverged")
            assert last == 4 or child.data.tags["resweep.status"] == "diverged"
    assert parents[0].data.tags["resweep.best_trial"]


def test_worker_killed_mid_trial_resumes_from_its_checkpoint(
        local_ray, faults, tmp_path, write_study, mlp, study_runs, steps, client_for, wait_for):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    epochs = 4
    study = write_study("kill-worker", space={"depth": [2, 4]}, epochs=epochs,
                        model=mlp)
    victim = next(t.name for t in expand_study(load_study(study)) if t.model.depth == 4)
    # On cue: the victim waits after epoch 2, its checkpoint written and its result
    # recorded; then its worker process is killed (SIGKILL, as the OOM killer would).
    faults.pause(victim, after_epoch=2)
    killed: list[int] = []

    def kill_the_victim_when_it_waits():
        def paused_and_recorded():
            pid = faults.paused_pid(victim)
            if pid is None:
                return None
            _, children = study_runs(uri, "kill-worker")
            return pid if any(c.data.tags.get("resweep.name") == victim
                              and c.data.tags.get("resweep.last_epoch") == "2"
                              and "resweep.checkpoint" in c.data.tags
                              for c in children) else None
        try:
            pid = wait_for(paused_and_recorded, timeout=240, what=f"{victim} paused")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        finally:
            faults.release(victim)

    killer = threading.Thread(target=kill_the_victim_when_it_waits, daemon=True)
    killer.start()
    assert run(study, tmp_path, uri) == 0
    killer.join(timeout=30)
    assert killed, f"{victim} never paused"

    _, children = study_runs(uri, "kill-worker")
    assert len(children) == 2
    for child in children:
        tags = child.data.tags
        assert tags["resweep.status"] == "finished" and child.info.status == "FINISHED"
        for key in ("val_error", "train_error", "iteration"):
            assert steps(uri, child.info.run_id, key) == list(range(1, epochs + 1))
    victim_run = next(c for c in children if c.data.tags["resweep.name"] == victim)
    assert victim_run.data.tags["resweep.worker_failures"] == "1"
    # Resumed from epoch 2's checkpoint, not started over: no epoch came twice, and the
    # iterations go on where the checkpoint left them.
    assert victim_run.data.tags["resweep.duplicate_results"] == "0"
    history = client_for(uri).get_metric_history(victim_run.info.run_id, "iteration")
    per_epoch = history[0].value
    assert [m.value for m in history] == [per_epoch * e for e in range(1, epochs + 1)]


def test_failed_trial_is_listed_and_exit_status_is_1(local_ray, tmp_path, capsys, write_study, mlp,
                                                     study_runs, client_for):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # A worker that cannot find its data set raises: Tune retries it (--max-failures 1),
    # then it counts as failed while the other trial finishes.
    study = write_study("one-fails", epochs=1, model={**mlp, "depth": 2},
                        space={"data.root": [None, str(tmp_path / "no-such-folder")]})
    assert run(study, tmp_path, uri, "--max-failures", "1") == 1
    out = capsys.readouterr().out
    assert "1 failed trial(s)" in out and "no-such-folder" in out

    parents, children = study_runs(uri, "one-fails")
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["resweep.trials.failed"] == "1"
    by_status = {c.data.tags["resweep.status"]: c for c in children}
    assert set(by_status) == {"finished", "failed"}
    failed = by_status["failed"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["resweep.worker_failures"] == "2"  # first try + one retry
    assert "no-such-folder" in failed.data.tags["resweep.error"]
    artifacts = {a.path for a in client_for(uri).list_artifacts(failed.info.run_id)}
    assert "error.txt" in artifacts


def test_a_repeated_proposal_with_a_nan_known_value_is_pruned_not_left_running():
    """A search proposal that lands on a trial done earlier is told to Optuna with the
    known value; a NaN one (a diverged loss) is told as pruned, never left RUNNING."""
    import optuna
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.search import TrialResolvingSearcher, optuna_distribution
    from search_spaces import load_study_text

    inner = OptunaSearch(space={"depth": optuna_distribution("depth", {
        "type": "choice", "values": [2]})}, metric="val_error", mode="min",
        sampler=optuna.samplers.RandomSampler(seed=0))
    done = expand_study(load_study_text(
        "name: nan-known\ndesign: grid\nmodel: {family: mlp, hidden: 8}\n"
        "data: {dataset: fashion-mnist, train_size: 256, val_size: 64}\n"
        "train: {recipe: cosine, epochs: 1}\nspace: {depth: [2]}\n"))[0]
    searcher = TrialResolvingSearcher(inner, lambda params: done,
                                      known_values={done.trial_id: float("nan")})
    assert searcher.suggest("t1") == Searcher.FINISHED  # the only trial is done
    states = {t.state for t in inner._ot_study.trials}
    assert states == {optuna.trial.TrialState.PRUNED}

