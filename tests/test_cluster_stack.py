"""The cluster stack's tracking half, run natively: PostgreSQL -> `mlflow server` -> clients.

docker-compose.yml cannot run here (no Docker engine), so this starts the same services
from the binaries on the machine (tests/cluster_fixtures.py) and checks what the stack
promises: everything logged through the server is read back through it, also after the
server was killed (SIGKILL to its process group) and started again on the same store.
"""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from cluster_fixtures import MlflowServer, StackUnavailable, postgres_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A PostgreSQL cluster and an MLflow server on it; yields the MlflowServer."""
    base = tmp_path_factory.mktemp("stack")
    with contextlib.ExitStack() as cleanup:
        try:
            pg = cleanup.enter_context(postgres_server())
        except StackUnavailable as missing:
            if os.environ.get("CI"):  # CI installs PostgreSQL: missing there is a bug
                pytest.fail(f"PostgreSQL is not installed in CI: {missing}")
            pytest.skip(f"PostgreSQL cannot run here: {missing}")
        server = cleanup.enter_context(
            MlflowServer(pg.sqlalchemy_uri, base / "artifacts", base / "logs"))
        yield server


def _log_study(client, study: str, depths: list[int], epochs: int) -> dict:
    """Log a parent run and one nested child per depth as `resweep run` does (contracts).

    Returns what was logged: {trial name: {"run_id", "val_error": [per epoch]}}.
    """
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = client.create_experiment(
        study, tags={"mlflow.experimentKind": "custom_model_development"})
    parent = client.create_run(experiment_id, run_name=f"{study}-parent",
                               tags={"resweep.kind": "study", "resweep.study": study})
    logged = {}
    for depth in depths:
        name = f"resnet-{depth}"
        child = client.create_run(experiment_id, run_name=name, tags={
            "mlflow.parentRunId": parent.info.run_id, "resweep.kind": "trial",
            "resweep.name": name})
        run_id = child.info.run_id
        client.log_batch(run_id, params=[Param("model.depth", str(depth))])
        errors = [round(0.9 / (epoch + 1) + depth / 1000, 6) for epoch in range(epochs)]
        for epoch, error in enumerate(errors):  # one request per result, as the driver does
            client.log_batch(run_id, metrics=[
                Metric("val_error", error, 0, epoch), Metric("epoch", epoch, 0, epoch)])
        client.log_dict(run_id, {"depth": depth}, "trial.json")
        client.set_tag(run_id, "resweep.status", "finished")
        client.set_terminated(run_id, "FINISHED")
        logged[name] = {"run_id": run_id, "val_error": errors}
    client.set_terminated(parent.info.run_id, "FINISHED")
    return logged


def _read_back(client, study: str, logged: dict) -> None:
    """Every run, metric step and artifact of `logged`, read back through the server."""
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None, f"experiment {study} lost"
    runs = client.search_runs([experiment.experiment_id], "tags.resweep.kind = 'trial'")
    assert sorted(r.info.run_name for r in runs) == sorted(logged)
    for run in runs:
        want = logged[run.info.run_name]
        assert run.info.run_id == want["run_id"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["resweep.status"] == "finished"
        history = client.get_metric_history(run.info.run_id, "val_error")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            list(enumerate(want["val_error"]))
        trial_json = client.download_artifacts(run.info.run_id, "trial.json")
        with open(trial_json) as f:
            assert json.load(f) == {"depth": int(run.data.params["model.depth"])}


def test_client_logs_survive_tracking_server_crashes(stack, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # artifact downloads land in tmp
    first = _log_study(MlflowClient(stack.url), "cluster-first", [8, 14], epochs=3)
    stack.kill()                 # SIGKILL the whole process group: a crash
    stack.start()
    client = MlflowClient(stack.url)
    _read_back(client, "cluster-first", first)

    second = _log_study(client, "cluster-second", [20], epochs=2)
    stack.kill()
    stack.start()
    client = MlflowClient(stack.url)
    _read_back(client, "cluster-first", first)
    _read_back(client, "cluster-second", second)
