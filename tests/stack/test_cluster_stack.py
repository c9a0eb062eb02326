"""The cluster stack's tracking half, run natively: PostgreSQL -> `mlflow server` -> resweep.

docker-compose.yml cannot run here (no Docker engine), so this starts the same services
from the binaries on the machine (fixtures of tests/conftest.py and tests/stack/conftest.py)
and runs real studies with the real command, as README "Run on a cluster" says:

1. `resweep run STUDY --tracking-uri http://127.0.0.1:PORT --storage DIR` (embedded Ray);
   every run, param, per-epoch metric and artifact is read back through the server;
2. the server is killed (SIGKILL to its process group) and started again on the same
   PostgreSQL store and artifact directory: everything reads back identically, and a
   rerun of the study finds every trial done;
3. a second study runs on a token-authenticated Ray head (`--address 127.0.0.1:PORT`),
   the server is killed and restarted again: both studies are complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

RESWEEP = str(Path(sys.executable).with_name("resweep"))
EPOCHS = 2


@pytest.fixture(scope="module")
def stack(postgres, mlflow_server, tmp_path_factory):
    """A PostgreSQL cluster and an MLflow server on it; yields the MlflowServer."""
    base = tmp_path_factory.mktemp("stack")
    with mlflow_server(postgres.sqlalchemy_uri, base / "artifacts", base / "logs") as server:
        yield server


def write_study(folder: Path, name: str) -> Path:
    """Two tiny trials (plain and residual MLP, seconds each) on 512 Fashion-MNIST images."""
    study = {
        "name": name,
        "description": "cluster stack test",
        "data": {"dataset": "fashion-mnist", "train_size": 512, "val_size": 256,
                 "test_size": 256, "augment": False},
        "train": {"recipe": "cosine", "epochs": EPOCHS, "lr": 0.05, "batch_size": 128,
                  "threads": 1},
        "model": {"family": "mlp", "hidden": 16},
        "design": "grid",
        "space": {"residual": [False, True], "depth": [2]},
        "repeats": 1,
        "resources": {"cpu": 1, "gpu": 0},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def resweep_run(study: Path, *args: str, env: dict | None = None) -> str:
    """`resweep run STUDY ARGS` in the study's folder; its output (asserts exit status 0)."""
    proc = subprocess.run([RESWEEP, "run", str(study), "-q", *args], cwd=study.parent,
                          env=dict(os.environ, **(env or {})), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"resweep run exited {proc.returncode}:\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def snapshot(url: str, study: str, downloads: Path) -> dict:
    """Everything the server holds for a study, as plain data (read through the server)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None, f"experiment {study!r} not on the server"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    out = {"experiment_tags": experiment.tags, "runs": {}}
    for run in runs:
        info, data = run.info, run.data
        artifacts = {}
        for item in client.list_artifacts(info.run_id):
            if not item.is_dir:
                local = client.download_artifacts(info.run_id, item.path, str(downloads))
                artifacts[item.path] = Path(local).read_text()
        out["runs"][info.run_id] = {
            "name": info.run_name, "status": info.status,
            "tags": {k: v for k, v in data.tags.items() if not k.startswith("mlflow.log")},
            "params": data.params,
            "metrics": {key: [(m.step, m.value) for m in
                              sorted(client.get_metric_history(info.run_id, key),
                                     key=lambda m: (m.step, m.timestamp))]
                        for key in data.metrics},
            "artifacts": artifacts,
        }
    return out


def check_study(snap: dict, study: str, study_file: Path, per_epoch_keys) -> None:
    """The contract of README "MLflow conventions", for a two-trial study run once."""
    assert snap["experiment_tags"]["mlflow.experimentKind"] == "custom_model_development"
    parents = [r for r in snap["runs"].values() if r["tags"]["resweep.kind"] == "study"]
    children = {rid: r for rid, r in snap["runs"].items() if r["tags"]["resweep.kind"] == "trial"}
    assert len(parents) == 1 and len(children) == 2
    parent_id = next(rid for rid, r in snap["runs"].items() if r is parents[0])
    assert parents[0]["status"] == "FINISHED"
    assert parents[0]["tags"]["resweep.study"] == study
    assert yaml.safe_load(parents[0]["artifacts"]["study.yaml"]) == \
        yaml.safe_load(study_file.read_text())
    assert sorted(r["params"]["model.residual"] for r in children.values()) == ["False", "True"]
    for child in children.values():
        assert child["tags"]["mlflow.parentRunId"] == parent_id
        assert child["tags"]["resweep.status"] == "finished" and child["status"] == "FINISHED"
        assert child["params"]["model.depth"] == "2" and child["params"]["train.epochs"] == "2"
        for key in per_epoch_keys:  # one value per epoch (test error: eval_every=1)
            assert len(child["metrics"][key]) == EPOCHS, (key, child["metrics"][key])
        assert [step for step, _ in child["metrics"]["val_error"]] == \
            [int(value) for _, value in child["metrics"]["epoch"]]
        for key in ("val_error", "train_error", "test_error"):
            assert all(0 <= value <= 1 for _, value in child["metrics"][key])
        assert float(child["tags"]["resweep.params"]) > 0 and "params" not in child["metrics"]
        trial = json.loads(child["artifacts"]["trial.json"])
        assert trial["model"]["residual"] == (child["params"]["model.residual"] == "True")
        assert child["tags"]["resweep.name"] == child["name"] == trial["name"]
        probes = json.loads(child["artifacts"]["probes.json"])
        check_probes(probes, depth=int(child["params"]["model.depth"]))


def check_probes(probes: dict, depth: int) -> None:
    """probes.json of a depth-`depth` MLP: the std of every Linear's response (input_proj,
    fc1 and fc2 of each block, output_proj) and a gradient norm per unit (input_proj, each
    block, output_proj), each a positive finite number."""
    responses, norms = probes["layer_responses"], probes["gradient_norms"]
    assert list(responses) == ["input_proj"] + [f"blocks.{b}.fc{i}" for b in range(depth)
                                                for i in (1, 2)] + ["output_proj"], responses
    assert list(norms) == ["input_proj"] + [f"blocks.{b}" for b in range(depth)] \
        + ["output_proj"], norms
    for value in [*responses.values(), *norms.values()]:
        assert 0 < value < float("inf"), probes


def test_studies_survive_tracking_server_crashes(stack, ray_head, per_epoch_keys, tmp_path,
                                                   monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    studies = tmp_path / "studies"
    studies.mkdir()
    downloads = tmp_path / "downloads"
    first = write_study(studies, "cluster-first")
    second = write_study(studies, "cluster-second")

    # 1. A study through the tracking server; everything reads back through it.
    resweep_run(first, "--tracking-uri", stack.url, "--storage", str(tmp_path / "results"))
    before = snapshot(stack.url, "cluster-first", downloads / "a")
    check_study(before, "cluster-first", first, per_epoch_keys)

    # 2. Crash and restart: the same data, and a rerun has nothing left to do.
    stack.kill()
    stack.start()
    assert snapshot(stack.url, "cluster-first", downloads / "b") == before
    rerun = resweep_run(first, "--tracking-uri", stack.url,
                        "--storage", str(tmp_path / "results"))
    assert "all 2 trials are already done" in rerun
    after_rerun = snapshot(stack.url, "cluster-first", downloads / "c")
    assert {rid: r for rid, r in after_rerun["runs"].items()
            if r["tags"]["resweep.kind"] == "trial"} == \
        {rid: r for rid, r in before["runs"].items() if r["tags"]["resweep.kind"] == "trial"}

    # 3. A second study on a Ray cluster with token authentication, then another crash.
    with ray_head(tmp_path / "ray", num_cpus=2) as head:
        resweep_run(second, "--address", head.address, "--tracking-uri", stack.url,
                    "--storage", str(tmp_path / "results"), env=head.env)
    second_snap = snapshot(stack.url, "cluster-second", downloads / "d")
    check_study(second_snap, "cluster-second", second, per_epoch_keys)
    stack.kill()
    stack.start()
    assert snapshot(stack.url, "cluster-first", downloads / "e") == after_rerun
    assert snapshot(stack.url, "cluster-second", downloads / "f") == second_snap
