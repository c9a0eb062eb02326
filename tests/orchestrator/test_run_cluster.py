"""`resweep run` against the session's real `ray start --head` (token auth, 127.0.0.1;
the `cluster` fixture), each driver a separate process: the code shipped to a head that
cannot import the project, a driver killed with SIGKILL mid-study, Ctrl-C and SIGTERM
(the driver as a Ray job's entrypoint, given $RAY_ADDRESS), the rerun rules they leave
behind, and a driver without the cluster's token.

Every fault lands on cue (workers.faults, the `faults` fixture): a trial waits after a
known epoch, its checkpoint written and its result recorded, until the test has killed
what it kills; no polling window to hit.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal

import pytest
import torch

from analysis.store import Tag
from search_spaces import expand_study, load_study
from workers.trial import train_trial

pytestmark = [pytest.mark.slow, pytest.mark.ray]

COMPARED_KEYS = ("epoch", "iteration", "lr", "train_loss", "train_error", "val_loss",
                 "val_error", "test_loss", "test_error")  # per epoch, all but timing


def trials_of(study) -> dict:
    """trial name -> TrialConfig of a study file."""
    return {t.name: t for t in expand_study(load_study(study))}


def recorded(study_runs, uri, study, name, epoch):
    """The child run of trial `name` once MLflow has its epoch `epoch` and a checkpoint."""
    _, children = study_runs(uri, study)
    for child in children:
        tags = child.data.tags
        if (tags.get("resweep.name") == name and tags.get("resweep.last_epoch") == str(epoch)
                and "resweep.checkpoint" in tags):
            return child
    return None


def history(client_for, uri, run_id) -> list[dict]:
    """The per-epoch metrics of a run as train_trial's history has them (COMPARED_KEYS)."""
    client, rows = client_for(uri), {}
    for key in COMPARED_KEYS:
        for metric in client.get_metric_history(run_id, key):
            rows.setdefault(metric.step, {})[key] = metric.value
    return [rows[step] for step in sorted(rows)]


def test_the_code_reaches_a_head_without_the_project_only_with_ship_code(
        cluster, tmp_path, resweep_on, write_study, mlp, study_runs, steps, per_epoch_keys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = write_study("on-cluster", space={"depth": [2, 4]}, epochs=2, model=mlp)
    # The head's Python has every package but not the project: without --ship-code its
    # workers cannot unpickle the trainable, each trial fails (no retries: quick).
    driver = resweep_on(study, uri, "--max-failures", "0", ship_code=False)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 1, output
    assert "2 failed trial(s)" in output and "No module named 'orchestrator'" in output, output

    # --ship-code: the project's packages travel as the job's runtime env (py_modules);
    # the rerun runs both trials (no trial got as far as a run of its own before).
    driver = resweep_on(study, uri)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output
    parents, children = study_runs(uri, "on-cluster")
    assert [p.info.status for p in parents] == ["FAILED", "FINISHED"]
    assert parents[0].data.tags["resweep.trials.failed"] == "2"
    assert len(children) == 2
    assert len({c.data.tags["resweep.trial_id"] for c in children}) == 2
    for child in children:
        assert child.data.tags["resweep.status"] == "finished"
        assert child.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
        for key in per_epoch_keys:
            assert steps(uri, child.info.run_id, key) == [1, 2]


def test_driver_killed_mid_study_rerun_ends_as_an_uninterrupted_run(
        cluster, faults, tmp_path, resweep_on, write_study, small_cnn, study_runs, steps,
        client_for, wait_for):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    epochs, pause_epoch = 4, 2
    study = write_study("driver-kill", space={"residual": [False, True]},
                        epochs=epochs, model=small_cnn, lr=0.05)
    trials = trials_of(study)
    victim, other = "plain-8-A-w0.5-s0", "resnet-8-A-w0.5-s0"
    assert set(trials) == {victim, other}
    # The kill lands on cue: the victim waits after epoch 2 (its checkpoint written, its
    # result recorded) while the other trial finishes.
    faults.pause(victim, after_epoch=pause_epoch)
    driver = resweep_on(study, uri, "--max-concurrent", "2")

    def one_done_one_paused():
        _, children = study_runs(uri, "driver-kill")
        done = [c for c in children if c.data.tags.get("resweep.name") == other
                and c.data.tags.get("resweep.status") == "finished"]
        midway = recorded(study_runs, uri, "driver-kill", victim, pause_epoch)
        return (done, midway) if faults.paused_pid(victim) and done and midway else None

    try:
        done, midway = wait_for(one_done_one_paused, timeout=240, interval=0.2,
                                what=f"{other} finished and {victim} paused at epoch 2")
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver only; the cluster lives on
        driver.communicate(timeout=30)
        faults.release(victim)  # the killed job's worker goes on (and is then stopped)
    assert midway.data.tags["resweep.status"] == "running"  # killed at epoch 2 of 4
    finished_before = done[0].info.end_time

    rerun = resweep_on(study, uri)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "1 finished" in output and "(+1 done earlier)" in output, output

    parents, children = study_runs(uri, "driver-kill")
    # The killed run's parent is continued (same study, same --set), not duplicated.
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # One run per trial: the finished one untouched, the interrupted one continued.
    assert len(children) == 2
    by_name = {c.data.tags["resweep.name"]: c for c in children}
    assert by_name[victim].info.run_id == midway.info.run_id
    assert by_name[other].info.end_time == finished_before
    for child in children:
        assert child.data.tags["resweep.status"] == "finished"
        assert child.info.status == "FINISHED"
        assert child.data.tags["resweep.duplicate_results"] == "0"
        for key in ("train_error", "val_error", "iteration"):
            assert steps(uri, child.info.run_id, key) == list(range(1, epochs + 1))

    # Resumed through Ray on another worker from epoch 2's checkpoint, the victim's every
    # epoch and its final metrics are those of the same trial trained start to end in one
    # process (CPU: deterministic; the worker ran it with one torch thread per CPU).
    threads = torch.get_num_threads()
    try:
        trial = trials[victim]
        reference = train_trial(dataclasses.replace(
            trial, train=dataclasses.replace(trial.train, threads=int(trial.resources.cpu))))
    finally:
        torch.set_num_threads(threads)
    expected = [{k: h[k] for k in COMPARED_KEYS if k in h} for h in reference.history]
    assert history(client_for, uri, midway.info.run_id) == expected
    final = by_name[victim].data.metrics
    assert final["test_error"] == reference.final["test_error"]
    assert final["val_error"] == reference.final["val_error"]
    assert by_name[victim].data.tags[Tag.PARAM_COUNT] == f"{float(reference.params):.0f}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_driver_exits_130_and_the_printed_command_resumes(
        sig, cluster, faults, tmp_path, resweep_on, run_in_subprocess, write_study, mlp,
        study_runs, steps, wait_for):
    """Ctrl-C (a driver given --address), SIGTERM (`ray job stop`: a job's entrypoint,
    which gets $RAY_ADDRESS): exit 130 and the command that resumes. Its rerun continues
    the trial that kept its checkpoint in its own run, starts the one whose checkpoint is
    gone afresh in a new run (the old run stays KILLED), under the same parent."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    epochs = 3
    study = write_study("interrupted", space={"depth": [2, 4]}, epochs=epochs, model=mlp)
    kept, gone = sorted(trials_of(study))
    for name in (kept, gone):
        faults.pause(name, after_epoch=1)
    as_job = sig == signal.SIGTERM
    driver = resweep_on(study, uri, "--max-concurrent", "2", address=not as_job)
    def both_paused_and_recorded():
        if not all(faults.paused_pid(n) for n in (kept, gone)):
            return None
        runs = [recorded(study_runs, uri, "interrupted", n, 1) for n in (kept, gone)]
        return runs if all(runs) else None

    try:
        wait_for(both_paused_and_recorded, timeout=240,
                 what="both trials paused after epoch 1, recorded in MLflow")
        driver.send_signal(sig)
        output, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
        for name in (kept, gone):
            faults.release(name)
    assert driver.returncode == 130, output
    resume = next(line.split("resume with: ", 1)[1] for line in output.splitlines()
                  if "resume with: " in line)
    assert resume.endswith("--resume")
    assert (f"--address {cluster.address}" in resume) != as_job, resume
    _, children = study_runs(uri, "interrupted")
    by_name = {c.data.tags["resweep.name"]: c for c in children}
    assert len(children) == 2
    for child in children:
        assert child.info.status == "KILLED"
        assert child.data.tags["resweep.status"] == "interrupted"
    checkpoint = by_name[gone].data.tags["resweep.checkpoint"]
    assert os.path.isdir(checkpoint)
    shutil.rmtree(checkpoint)

    env = dict(cluster.env, **({"RAY_ADDRESS": cluster.address} if as_job else {}))
    rerun = run_in_subprocess(resume.split()[1:], tmp_path, env=env)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    parents, children = study_runs(uri, "interrupted")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    again = [c for c in children if c.info.run_id == by_name[kept].info.run_id]
    assert len(again) == 1 and again[0].data.tags["resweep.status"] == "finished"
    assert steps(uri, again[0].info.run_id, "train_error") == list(range(1, epochs + 1))
    assert again[0].data.tags["resweep.duplicate_results"] == "0"
    old = next(c for c in children if c.info.run_id == by_name[gone].info.run_id)
    assert old.info.status == "KILLED" and old.data.tags["resweep.status"] == "interrupted"
    assert steps(uri, old.info.run_id, "train_error") == [1]
    (new,) = [c for c in children if c.data.tags["resweep.name"] == gone
              and c.info.run_id != old.info.run_id]
    assert new.data.tags["resweep.status"] == "finished"
    assert steps(uri, new.info.run_id, "train_error") == list(range(1, epochs + 1))


def test_a_rerun_with_another_set_gets_a_new_parent(
        cluster, faults, tmp_path, resweep_on, write_study, mlp, study_runs, steps, wait_for):
    """The parent of an unfinished run is continued only by the same study and --set: a
    changed --set (here one that leaves the trial ids alone) opens a new parent and closes
    the old one; the interrupted trial still continues in its own run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = write_study("changed-set", space={"depth": [2]}, epochs=2, model=mlp)
    (name,) = trials_of(study)
    faults.pause(name, after_epoch=1)
    driver = resweep_on(study, uri)
    try:
        midway = wait_for(lambda: faults.paused_pid(name) and recorded(
            study_runs, uri, "changed-set", name, 1), timeout=240, what=f"{name} paused")
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.communicate(timeout=30)
        faults.release(name)

    rerun = resweep_on(study, uri, "--set", "train.threads=1")
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    parents, (child,) = study_runs(uri, "changed-set")
    assert len(parents) == 2
    assert parents[0].info.status == "KILLED"
    assert parents[0].data.tags["resweep.status"] == "interrupted"
    assert parents[1].info.status == "FINISHED"
    assert parents[0].data.tags["resweep.study_hash"] != parents[1].data.tags[
        "resweep.study_hash"]
    assert child.info.run_id == midway.info.run_id
    assert child.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
    assert steps(uri, child.info.run_id, "train_error") == [1, 2]


def test_a_driver_with_another_token_is_refused(
        cluster, tmp_path, run_in_subprocess, write_study, mlp):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = write_study("no-token", space={"depth": [2]}, epochs=1, model=mlp)
    # Token auth on, but not the cluster's token (set explicitly: an in-process Ray of an
    # earlier test may have left RAY_AUTH_MODE and ~/.ray/auth_token in this session).
    wrong = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}
    assert wrong["RAY_AUTH_TOKEN"] != cluster.env["RAY_AUTH_TOKEN"]
    driver = run_in_subprocess(["run", str(study), "--address", cluster.address,
                                "--tracking-uri", uri, "--quiet"], tmp_path, env=wrong)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 2, output
    assert f"the Ray cluster at '{cluster.address}' rejected this driver's authentication" \
        in output, output
    assert "Traceback" not in output
