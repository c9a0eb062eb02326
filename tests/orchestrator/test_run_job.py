"""Cluster path 3 of the README: `ray job submit` of `resweep run`, against a real
`ray start --head` with its dashboard and job server (token auth, 127.0.0.1).

The head is a node with resweep installed (the venv's bin first on its PATH, as on an
image or an activated venv), so the job's entrypoint is the README's command as written:
`resweep run STUDY --address auto` from the uploaded `working_dir`. `ray job stop` is
what a user stops it with; submitting the same command again resumes the study.

The job server needs ray[default]'s packages (docker/requirements-cluster.txt); `make
test` installs them. Without them the test fails in CI and skips elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.orchestrator.test_run_cluster import recorded, trials_of

pytestmark = [pytest.mark.slow, pytest.mark.ray]

RAY = str(Path(sys.executable).with_name("ray"))
JOB_SERVER_PACKAGES = ("aiohttp_cors", "opencensus", "prometheus_client")
_missing = [m for m in JOB_SERVER_PACKAGES if importlib.util.find_spec(m) is None]
if _missing and not os.environ.get("CI"):
    pytest.skip(f"the Ray job server needs ray[default] ({', '.join(_missing)} missing): "
                "pip install -r docker/requirements-cluster.txt (make test does)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def job_head(ray_head, tmp_path_factory, wait_for):
    """A head with the job server, resweep on its PATH; ready once the dashboard answers
    the token."""
    assert not _missing, f"the Ray job server needs {', '.join(_missing)} (make test installs " \
        "docker/requirements-cluster.txt)"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with ray_head(tmp_path_factory.mktemp("job-head"), num_cpus=2, env={"PATH": path},
                  dashboard=True) as head:
        def answers() -> bool:
            try:
                return bool(job_server(head, "version"))
            except OSError:
                return False
        wait_for(answers, timeout=120, interval=0.5, what="the Ray job server answering")
        yield head


def job_server(head, path: str) -> dict:
    """GET /api/PATH of the job server with the cluster's token (its JSON answer)."""
    request = urllib.request.Request(
        f"{head.dashboard_url}/api/{path}",
        headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def ray_job(head, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`ray job ARGS --address <the job server>` with the cluster's token."""
    command, rest = args[0], args[1:]
    return subprocess.run([RAY, "job", command, "--address", head.dashboard_url, *rest],
                          env=dict(os.environ, **head.env), capture_output=True, text=True,
                          timeout=timeout)


def test_a_submitted_study_stops_on_ray_job_stop_and_resumes_when_submitted_again(
        job_head, faults, tmp_path, write_study, mlp, study_runs, steps, wait_for):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    epochs = 3
    study = write_study("as-job", space={"depth": [2]}, epochs=epochs, model=mlp)
    (name,) = trials_of(study)
    working_dir = tmp_path / "job-files"
    working_dir.mkdir()
    shutil.copy(study, working_dir / study.name)
    # The README's command: the study path relative to the uploaded working_dir, the
    # tracking URI and storage as the head sees them.
    entrypoint = ["resweep", "run", study.name, "--address", "auto", "--tracking-uri", uri,
                  "--storage", str(tmp_path / "ray_results"), "--quiet"]
    runtime_env = json.dumps({"working_dir": str(working_dir)})

    faults.pause(name, after_epoch=1)
    try:
        first = ray_job(job_head, "submit", "--submission-id", "first", "--no-wait",
                        "--runtime-env-json", runtime_env, "--", *entrypoint)
        assert first.returncode == 0, first.stdout + first.stderr
        wait_for(lambda: faults.paused_pid(name) and recorded(study_runs, uri, "as-job",
                                                              name, 1),
                 timeout=240, what="the job's trial paused after epoch 1, in MLflow")
        stop = ray_job(job_head, "stop", "first")
        assert stop.returncode == 0, stop.stdout + stop.stderr
    finally:
        faults.release(name)
    assert job_server(job_head, "jobs/first")["status"] == "STOPPED"
    # The driver got SIGTERM (`ray job stop`) and said how to resume, as after Ctrl-C.
    logs = ray_job(job_head, "logs", "first").stdout
    assert "resweep run: interrupted;" in logs and "resume with: resweep run" in logs, logs
    # SIGTERM reached the driver: the trial is recorded as interrupted, not left running.
    parents, children = study_runs(uri, "as-job")
    assert len(parents) == 1 and len(children) == 1
    assert children[0].info.status == "KILLED"
    assert children[0].data.tags["resweep.status"] == "interrupted"

    again = ray_job(job_head, "submit", "--submission-id", "second",
                    "--runtime-env-json", runtime_env, "--", *entrypoint)
    assert again.returncode == 0, again.stdout + again.stderr
    assert job_server(job_head, "jobs/second")["status"] == "SUCCEEDED"
    parents_after, children_after = study_runs(uri, "as-job")
    # The same parent and the same child run, continued from epoch 1's checkpoint: every
    # epoch recorded once.
    assert [p.info.run_id for p in parents_after] == [parents[0].info.run_id]
    assert parents_after[0].info.status == "FINISHED"
    assert [c.info.run_id for c in children_after] == [children[0].info.run_id]
    child = children_after[0]
    assert child.info.status == "FINISHED" and child.data.tags["resweep.status"] == "finished"
    assert steps(uri, child.info.run_id, "train_error") == list(range(1, epochs + 1))
    assert child.data.tags["resweep.duplicate_results"] == "0"
