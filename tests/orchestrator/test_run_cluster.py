"""`resweep run --address` against a real `ray start --head` cluster (token auth) on
127.0.0.1, with the driver as a separate process: normal completion, and a driver killed
with SIGKILL mid-study (at a known epoch: workers.trial's test-only pause) whose rerun
finishes the study with no duplicate runs.

One cluster for the module; each test's driver is a `resweep` subprocess.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from workers.trial import PAUSE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# The driver-kill test's trials; the plain one pauses after this epoch (of 4).
VICTIM, OTHER, PAUSE_EPOCH = "plain-8-A-w0.5-s0", "resnet-8-A-w0.5-s0", 2


@pytest.fixture(scope="module")
def pause_sentinel(tmp_path_factory) -> Path:
    """The file VICTIM waits for after PAUSE_EPOCH (workers.trial.PAUSE_ENV); it exists, so
    nothing waits, unless a test removes it."""
    sentinel = tmp_path_factory.mktemp("pause") / "release"
    sentinel.touch()
    return sentinel


@pytest.fixture(scope="module")
def cluster(ray_head, tmp_path_factory, pause_sentinel):
    env = {PAUSE_ENV: f"{PAUSE_EPOCH}@{VICTIM}:{pause_sentinel}"}  # reaches the workers
    with ray_head(tmp_path_factory.mktemp("ray-head"), env=env) as head:
        yield head


@pytest.fixture
def resweep_on(cluster, run_in_subprocess, tmp_path):
    """resweep_on(study, uri, *extra): a `resweep run --address` driver for the cluster,
    with the head's token in its environment."""
    def start(study, uri, *extra):
        args = ["run", str(study), "--address", cluster.address, "--tracking-uri", uri,
                "--storage", str(tmp_path / "ray_results"), "--quiet", *extra]
        return run_in_subprocess(args, tmp_path, env=cluster.env)
    return start


def test_run_on_a_ray_cluster_with_address(cluster, tmp_path, resweep_on, write_study, mlp,
                                           study_runs, steps, per_epoch_keys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = write_study("on-cluster", space={"depth": [2, 4]}, epochs=2,
                        model=mlp)
    # --ship-code: the project's packages travel as the job's runtime env (py_modules).
    driver = resweep_on(study, uri, "--ship-code")
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output
    parents, children = study_runs(uri, "on-cluster")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    for child in children:
        assert child.data.tags["resweep.status"] == "finished"
        for key in per_epoch_keys:
            assert steps(uri, child.info.run_id, key) == [1, 2]


def test_driver_killed_mid_study_rerun_completes_without_duplicates(
        cluster, pause_sentinel, tmp_path, resweep_on, write_study, small_cnn, study_runs,
        steps, wait_for):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    epochs = 4
    study = write_study("driver-kill", space={"residual": [False, True]},
                        epochs=epochs, model=small_cnn, lr=0.05)
    # The kill lands on cue: VICTIM waits after epoch PAUSE_EPOCH (its checkpoint written,
    # its result sent) while OTHER finishes; no polling window to hit.
    paused = Path(f"{pause_sentinel}.paused")
    pause_sentinel.unlink()
    driver = resweep_on(study, uri, "--max-concurrent", "2")

    def one_done_one_paused():
        if not paused.exists():
            return None
        _, children = study_runs(uri, "driver-kill")
        by_name = {c.data.tags.get("resweep.name"): c for c in children}
        done, midway = by_name.get(OTHER), by_name.get(VICTIM)
        if (done is not None and done.data.tags.get("resweep.status") == "finished"
                and midway is not None
                and midway.data.tags.get("resweep.last_epoch") == str(PAUSE_EPOCH)):
            return [done], [midway]
        return None

    try:
        done, midway = wait_for(one_done_one_paused, timeout=240, interval=0.2,
                                what=f"{OTHER} finished and {VICTIM} paused at epoch 2")
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver only; the cluster lives on
        driver.communicate(timeout=30)
        pause_sentinel.touch()  # release (the killed job's worker, and every later trial)
        paused.unlink(missing_ok=True)
    assert midway[0].data.tags["resweep.status"] == "running"  # killed at epoch 2 of 4
    finished_before = {c.info.run_id: c.info.end_time for c in done}

    rerun = resweep_on(study, uri)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "1 finished" in output and "(+1 done earlier)" in output, output

    parents, children = study_runs(uri, "driver-kill")
    # The killed run's parent is continued (same study), not duplicated.
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # One run per trial: the finished one untouched, the interrupted one continued.
    assert len(children) == 2
    assert len({c.data.tags["resweep.trial_id"] for c in children}) == 2
    for child in children:
        assert child.data.tags["resweep.status"] == "finished"
        assert child.info.status == "FINISHED"
        assert child.data.tags["resweep.duplicate_results"] == "0"
        for key in ("train_error", "val_error", "iteration"):
            assert steps(uri, child.info.run_id, key) == list(range(1, epochs + 1))
        if child.info.run_id in finished_before:
            assert child.info.end_time == finished_before[child.info.run_id]
    assert midway[0].info.run_id in {c.info.run_id for c in children}


def test_ctrl_c_exits_130_and_the_printed_command_resumes(
        cluster, tmp_path, resweep_on, run_in_subprocess, write_study, small_cnn, study_runs,
        steps, wait_for):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    epochs = 3
    study = write_study("ctrl-c", space={"residual": [True]}, epochs=epochs,
                        model=small_cnn, lr=0.05)
    driver = resweep_on(study, uri)

    def midway():
        _, children = study_runs(uri, "ctrl-c")
        return [c for c in children if int(c.data.tags.get("resweep.last_epoch", "0")) >= 1]

    wait_for(midway, timeout=240, what="a trial past its first epoch")
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, output
    resume = next(line.split("resume with: ", 1)[1] for line in output.splitlines()
                  if "resume with: " in line)
    assert resume.endswith("--resume") and f"--address {cluster.address}" in resume
    _, (child,) = study_runs(uri, "ctrl-c")
    assert child.info.status == "KILLED"
    assert child.data.tags["resweep.status"] == "interrupted"
    assert "resweep.checkpoint" in child.data.tags

    rerun = run_in_subprocess(resume.split()[1:], tmp_path, env=cluster.env)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    parents, (again,) = study_runs(uri, "ctrl-c")
    assert again.info.run_id == child.info.run_id  # continued in the same run
    assert again.data.tags["resweep.status"] == "finished"
    assert steps(uri, again.info.run_id, "train_error") == list(range(1, epochs + 1))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
