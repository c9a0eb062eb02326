"""The rerun rules of the README ("Nothing lost") and the live progress line, on the
session's in-process Ray with real SQLite stores: a worker that dies more often than
--max-failures, a rerun retrying it, a search study topped up to `num_samples`, a deleted
experiment. (An interrupted trial continuing in its own run, one whose checkpoint is gone
starting afresh and a changed --set opening a new parent: tests/orchestrator/
test_run_cluster.py, where a driver can be killed.)
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from orchestrator.cli import main as resweep
from search_spaces import expand_study, load_study

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def run(study, tmp_path, uri, *extra):
    return resweep(["run", str(study), "--tracking-uri", uri,
                    "--storage", str(tmp_path / "ray_results"), *extra])


def test_a_worker_that_dies_more_than_max_failures_times_fails_and_a_rerun_retries_it(
        local_ray, faults, tmp_path, capsys, write_study, mlp, study_runs, steps):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = write_study("dies", epochs=2, model=mlp, space={"depth": [2, 4]})
    victim, other = sorted(t.name for t in expand_study(load_study(study)))
    # Its process exits before epoch 2 on every try: the first, then each retry that
    # resumes from epoch 1's checkpoint (--max-failures: default 2 retries).
    faults.die(victim, at_epoch=2)
    assert run(study, tmp_path, uri, "--quiet") == 1
    out = capsys.readouterr().out
    assert "1 finished, 0 diverged, 0 stopped, 1 failed" in out, out
    assert "1 failed trial(s)" in out and f"    {victim} (" in out, out
    assert faults.deaths(victim) == 3  # the first try and 2 retries

    parents, children = study_runs(uri, "dies")
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["resweep.trials.failed"] == "1"
    by_name = {c.data.tags["resweep.name"]: c for c in children}
    failed = by_name[victim]
    assert failed.info.status == "FAILED" and failed.data.tags["resweep.status"] == "failed"
    assert failed.data.tags["resweep.worker_failures"] == "3"
    assert steps(uri, failed.info.run_id, "train_error") == [1]
    assert by_name[other].data.tags["resweep.status"] == "finished"

    # The rerun retries it (the cue gone): a new run, the failed one left as it was.
    faults.spare(victim)
    assert run(study, tmp_path, uri, "--quiet") == 0
    out = capsys.readouterr().out
    assert "1 finished, 0 diverged, 0 stopped, 0 failed (+1 done earlier)" in out, out
    parents, children = study_runs(uri, "dies")
    assert [p.info.status for p in parents] == ["FAILED", "FINISHED"]
    assert len(children) == 3
    old = next(c for c in children if c.info.run_id == failed.info.run_id)
    assert old.info.status == "FAILED" and old.info.end_time == failed.info.end_time
    assert steps(uri, old.info.run_id, "train_error") == [1]
    (new,) = [c for c in children if c.data.tags["resweep.name"] == victim
              and c.info.run_id != failed.info.run_id]
    assert new.info.status == "FINISHED" and new.data.tags["resweep.status"] == "finished"
    assert new.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
    assert steps(uri, new.info.run_id, "train_error") == [1, 2]
    assert faults.deaths(victim) == 3


LINE = re.compile(r"^\[\S+\] done (\d)/2 running (\d) pending (\d) failed (\d) "
                  r"\(\+2 done earlier\)(.*)$")


def test_a_search_rerun_tops_up_to_num_samples_with_the_live_progress_line(
        local_ray, tmp_path, capsys, monkeypatch, write_study, mlp, study_runs, steps,
        client_for):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Six points in all: Optuna proposes points already run, which must not run again.
    study = write_study(
        "top-up", epochs=2, design="search", lr=None, model=mlp,
        space={"depth": {"choice": [2, 4, 6]}, "train.lr": {"choice": [0.005, 0.02]}},
        search={"algorithm": "optuna-tpe", "num_samples": 4, "metric": "val_error",
                "mode": "min", "max_concurrent": 2, "seed": 3})
    assert run(study, tmp_path, uri, "--quiet", "--set", "search.num_samples=2") == 0
    capsys.readouterr()
    _, first = study_runs(uri, "top-up")
    assert len(first) == 2
    ended = {c.info.run_id: c.info.end_time for c in first}

    # As written (4 samples), without --quiet: two more trials, and the live line. Its
    # stream is sys.stdout, which Tune pickles with its callbacks (cloudpickle: by name);
    # pytest's capture object would not pickle, so stdout is a plain file here.
    with open(tmp_path / "stdout.txt", "w+") as stdout, monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", stdout)
        assert run(study, tmp_path, uri) == 0
    out = (tmp_path / "stdout.txt").read_text()
    parents, children = study_runs(uri, "top-up")
    assert len(parents) == 2 and len(children) == 4
    assert len({c.data.tags["resweep.trial_id"] for c in children}) == 4  # none twice
    assert {c.info.run_id: c.info.end_time for c in children
            if c.info.run_id in ended} == ended  # the first two untouched
    new = [c for c in children if c.info.run_id not in ended]
    for child in new:
        assert child.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
        assert child.data.tags["resweep.status"] == "finished"
        assert steps(uri, child.info.run_id, "val_error") == [1, 2]
        params = json.loads(child.data.tags["resweep.search_params"])
        assert params["depth"] in (2, 4, 6) and params["train.lr"] in (0.005, 0.02)

    # The progress line (printed on each change off a terminal): counts that add up to
    # this run's 2 trials, the earlier ones, then the best so far and the ETA.
    lines = [m for m in map(LINE.match, out.splitlines()) if m]
    assert lines, out
    counts = [tuple(int(m.group(i)) for i in (1, 2, 3, 4)) for m in lines]
    assert all(sum(c) == 2 and c[3] == 0 for c in counts), counts
    assert max(c[1] for c in counts) == 2  # max_concurrent 2: both ran at once
    assert counts[-1] == (2, 0, 0, 0)
    client = client_for(uri)
    best = min((m.value, c.info.run_name) for c in new
               for m in client.get_metric_history(c.info.run_id, "val_error"))
    # Once the first trial is done, the line has the best so far and an ETA; at the end
    # the best of the run (over every epoch reported) and no ETA.
    midway = [m.group(5) for m, c in zip(lines, counts) if c[0] == 1]
    assert midway, counts
    rate = r"( \| [0-9.e+]+ trials/min)?"   # once a trial has finished in this run
    assert re.fullmatch(rate + r" \| best val_error \d\.\d{4} \(\S+\) \| ETA [0-9hms]+",
                        midway[-1]), midway
    assert re.fullmatch(rate + re.escape(f" | best val_error {best[0]:.4f} ({best[1]})"),
                        lines[-1].group(5)), out
    assert "resweep run: study 'top-up': 2 finished, 0 diverged, 0 stopped, 0 failed " \
        "(+2 done earlier)" in out

    # Once there are num_samples done trials, nothing is left to run.
    assert run(study, tmp_path, uri, "--quiet") == 0
    assert "all 4 trials are already done" in capsys.readouterr().out
    assert len(study_runs(uri, "top-up")[1]) == 4


def test_a_deleted_experiment_is_an_error(tmp_path, capsys, write_study, mlp, client_for):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = write_study("deleted", epochs=1, model=mlp, space={"depth": [2]})
    client = client_for(uri)
    client.delete_experiment(client.create_experiment("deleted"))
    assert run(study, tmp_path, uri) == 2
    err = capsys.readouterr().err
    assert "study name 'deleted': its MLflow experiment is deleted in " + uri in err, err
    assert "mlflow experiments restore" in err and "Traceback" not in err
    assert not (tmp_path / "ray_results").exists()
