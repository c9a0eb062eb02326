"""Nothing lost when the driver or the tracking server goes away (issue 13), end to end
through `resweep run` subprocesses on an embedded Ray, real MLflow stores, real trials:

- the driver SIGKILLed while its writer holds queued results (the writer's test-only
  hold keeps epochs after HOLD_AFTER queued; the kill lands on cue, when a trial paused
  after PAUSE_AT with its checkpoint written and the other trial finished): the rerun
  backfills from the checkpoints' history, resumes, and every epoch of every trial is in
  MLflow once, with the values of an uninterrupted run of the same study;
- the tracking server (`mlflow server`, SQLite backend) killed mid-study (on cue: trials
  paused, results held in the writer) and restarted on the same port and store at least
  OUTAGE_S seconds later: the progress line says the writer is retrying, the study goes
  on (trials that start after the kill finish before the server is back), and every
  epoch of every trial arrives once; and a study that ends while the server is still down exits 1 after
  $RESWEEP_TRACKING_FLUSH_TIMEOUT saying a rerun backfills, which the rerun does.

OUTAGE_S is 5 s here ($RESWEEP_TEST_OUTAGE_S sets it; the issue's 60 s outage behaves
the same way, with the writer's backoff capped at 30 s: run it with
RESWEEP_TEST_OUTAGE_S=60).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from analysis.store import SIZE_TAGS
from orchestrator.tracking_writer import FLUSH_TIMEOUT_ENV, HOLD_ENV
from search_spaces import expand_study, load_study
from workers.checkpoints import HISTORY_NAME
from workers.faults import FAULTS_ENV

pytestmark = [pytest.mark.slow, pytest.mark.ray]

EPOCHS, HOLD_AFTER, PAUSE_AT = 6, 2, 4
OUTAGE_S = float(os.environ.get("RESWEEP_TEST_OUTAGE_S", "5"))
TIMING_KEYS = ("elapsed_s", "images_per_s")   # differ between any two runs


class Driver:
    """A `resweep run` subprocess whose output is collected line by line as it comes."""

    def __init__(self, run_in_subprocess, args, cwd, env):
        self.process = run_in_subprocess(args, cwd, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def saying(self, text: str, timeout: float) -> None:
        """Wait until a line of the output contains `text` (the output in the error)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"no line says {text!r}:\n{self.output}")
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def resweep_run(run_in_subprocess, tmp_path):
    """resweep_run(study, uri, env={}, *extra) -> a Driver: `resweep run` on an embedded
    Ray with 2 CPUs' trials side by side, Tune's folders in tmp_path/ray_results."""
    def start(study, uri, *extra, env=None):
        args = ["run", str(study), "--tracking-uri", uri, "--storage",
                str(tmp_path / "ray_results"), "--max-concurrent", "2", *extra]
        environ = {k: v for k, v in os.environ.items() if k not in (FAULTS_ENV, HOLD_ENV)}
        return Driver(run_in_subprocess, args, tmp_path,
                      {**environ, **(env or {})})
    return start


def curves(client, run, keys) -> dict[str, list[tuple[int, float]]]:
    """{key: [(epoch, value), ...]} of a run, sorted by epoch (duplicates kept)."""
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(
        run.info.run_id, key)) for key in keys}


def assert_every_epoch_once(client, children, keys, epochs=EPOCHS):
    for child in children:
        for key, points in curves(client, child, keys).items():
            assert [step for step, _ in points] == list(range(1, epochs + 1)), \
                (child.info.run_name, key)


def assert_study_finished_once(study_runs, client_for, uri, study, name, keys):
    """One finished parent, one finished run per trial of the study file, every epoch of
    each recorded once."""
    parents, children = study_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == \
        sorted(t.name for t in expand_study(load_study(study)))   # one run per trial
    assert all(c.data.tags["resweep.status"] == "finished" for c in children)
    assert_every_epoch_once(client_for(uri), children, keys)


def pause_after(folder: Path, epoch: int, *trials: str) -> dict:
    """The trials' pause cues (workers/faults.py): each waits after reporting `epoch` until
    its cue is removed (`release`). The environment that turns the cues on."""
    folder.mkdir(exist_ok=True)
    for name in trials:
        (folder / f"{name}.pause").write_text(str(epoch))
    return {FAULTS_ENV: str(folder)}


def paused(folder: Path) -> bool:
    """Whether some trial waits on its pause cue."""
    return any(folder.glob("*.paused"))


def release(folder: Path) -> None:
    for cue in folder.glob("*.pause"):
        cue.unlink()


def held_back(marker: Path) -> int:
    """What the held writer says it has queued (tracking_writer.HOLD_ENV), 0 before."""
    try:
        return int(marker.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def final_checkpoint_written(storage: Path, trial_name: str) -> bool:
    """Whether a trial's last epoch is checkpointed in Tune's folders (its history says
    final), i.e. the trial has finished in its worker."""
    for path in storage.glob(f"*/{trial_name}_*/checkpoint_*/{HISTORY_NAME}"):
        try:
            if json.loads(path.read_text()).get("final"):
                return True
        except ValueError:
            continue   # being copied
    return False


def test_driver_killed_with_queued_results_rerun_backfills_every_epoch_once(
        tmp_path, write_study, mlp, resweep_run, study_runs, client_for, wait_for,
        kill_group, per_epoch_keys):
    study = write_study("driver-kill-backlog", space={"depth": [2, 4]}, epochs=EPOCHS,
                        model=mlp)
    victim, other = (t.name for t in expand_study(load_study(study)))
    keys = [k for k in per_epoch_keys if k not in TIMING_KEYS]
    size_tags = sorted(SIZE_TAGS.values())   # params and macs: tags, logged with the end

    # The reference: the same study, uninterrupted, in its own store and folders.
    ref_uri = f"sqlite:///{tmp_path}/reference.db"
    ref = resweep_run(study, ref_uri, "--quiet")
    assert ref.wait(timeout=300) == 0, ref.output
    _, ref_children = study_runs(ref_uri, "driver-kill-backlog")
    reference = {c.info.run_name: curves(client_for(ref_uri), c, keys) for c in ref_children}
    reference_size = {c.info.run_name: [c.data.tags[t] for t in size_tags] for c in ref_children}
    assert sorted(reference) == sorted([victim, other])

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    faults, hold = tmp_path / "faults", tmp_path / "release-writer"
    driver = resweep_run(study, uri, "--quiet", env={
        **pause_after(faults, PAUSE_AT, victim), HOLD_ENV: f"{HOLD_AFTER}:{hold}"})
    storage = tmp_path / "ray_results"
    try:
        # On cue: the victim has checkpointed epoch PAUSE_AT and waits; the other trial
        # has finished; the writer holds what came after epoch HOLD_AFTER: the victim's
        # epochs 3..4, the other's 3..6 and its end, queued.
        queued = (PAUSE_AT - HOLD_AFTER) + (EPOCHS - HOLD_AFTER) + 1
        wait_for(lambda: (paused(faults)
                          and held_back(Path(f"{hold}.held")) == queued),
                 timeout=300, interval=0.2,
                 what=f"{victim} paused and {queued} results queued")
        assert final_checkpoint_written(storage, other)
    finally:
        os.kill(driver.process.pid, signal.SIGKILL)   # the driver first, then its Ray
        kill_group(driver.process, signal.SIGKILL, grace_s=10)
        driver.wait(timeout=30)

    client = client_for(uri)
    _, children = study_runs(uri, "driver-kill-backlog")
    by_name = {c.info.run_name: c for c in children}
    assert sorted(by_name) == sorted([victim, other])
    for name, child in by_name.items():   # what the killed driver left: epochs 1..2 only
        assert child.info.status == "RUNNING", name
        assert child.data.tags["resweep.last_epoch"] == str(HOLD_AFTER), name
        assert [s for s, _ in curves(client, child, ["val_error"])["val_error"]] == \
            list(range(1, HOLD_AFTER + 1)), name

    rerun = resweep_run(study, uri)
    assert rerun.wait(timeout=300) == 0, rerun.output
    assert "2 continue from a checkpoint" in rerun.output, rerun.output
    assert "2 finished" in rerun.output, rerun.output

    parents, children = study_runs(uri, "driver-kill-backlog")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_id for c in children) == \
        sorted(c.info.run_id for c in by_name.values())   # continued in the same runs
    assert_every_epoch_once(client, children, keys)
    for child in children:
        assert child.data.tags["resweep.status"] == "finished"
        assert child.data.tags["resweep.duplicate_results"] == "0"
        # Every epoch's value (and params, macs) equals the uninterrupted run's.
        assert curves(client, child, keys) == reference[child.info.run_name], \
            child.info.run_name
        assert [child.data.tags[t] for t in size_tags] == \
            reference_size[child.info.run_name], child.info.run_name


@pytest.fixture
def server(mlflow_server, tmp_path):
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts",
                       tmp_path / "server-logs") as running:
        yield running


def progress_done(line: str) -> int | None:
    match = re.search(r"done (\d+)/", line)
    return int(match.group(1)) if match else None


def test_tracking_server_down_mid_study_the_study_goes_on_and_every_epoch_arrives(
        tmp_path, write_study, mlp, server, resweep_run, study_runs, client_for, wait_for,
        per_epoch_keys):
    study = write_study("server-outage", space={"depth": [2, 3, 4]}, epochs=EPOCHS,
                        model=mlp, repeats=2)   # 6 trials (deeper toys diverge at this lr)
    faults, hold = tmp_path / "faults", tmp_path / "release-writer"
    every_trial = [t.name for t in expand_study(load_study(study))]
    driver = resweep_run(study, server.url, env={
        **pause_after(faults, PAUSE_AT, *every_trial),   # until released
        HOLD_ENV: f"{PAUSE_AT - 1}:{hold}", FLUSH_TIMEOUT_ENV: "600"})
    try:
        # On cue: the first two trials wait after epoch PAUSE_AT, whose results the writer
        # holds; the server dies; the writer, let go, finds it gone while the study runs.
        wait_for(lambda: paused(faults)
                 and held_back(Path(f"{hold}.held")) >= 1,
                 timeout=300, interval=0.2, what="trials paused with results queued")
        server.kill()
        killed_at = time.monotonic()
        hold.touch()
        driver.saying("tracking server not answering, retrying", timeout=120)
        release(faults)   # the study goes on: 2 trials finish, the other 4 start and finish
        wait_for(lambda: any("not answering" in line and (progress_done(line) or 0) >= 3
                             for line in driver.lines), timeout=300, interval=0.2,
                 what="a trial started during the outage to finish during it")
        threading.Event().wait(max(0.0, OUTAGE_S - (time.monotonic() - killed_at)))
        server.start()                     # same port, same store
        assert driver.wait(timeout=600) == 0, driver.output
    finally:
        if driver.process.poll() is None:
            driver.process.kill()
    assert_study_finished_once(study_runs, client_for, server.url, study, "server-outage",
                               per_epoch_keys)


def test_study_ends_while_the_server_is_down_exit_1_then_the_rerun_backfills(
        tmp_path, write_study, mlp, server, resweep_run, study_runs, client_for, wait_for,
        per_epoch_keys):
    study = write_study("server-down-at-end", space={"depth": [2, 3]}, epochs=EPOCHS,
                        model=mlp)
    first = expand_study(load_study(study))[0].name
    faults = tmp_path / "faults"
    driver = resweep_run(study, server.url, "--quiet", env={
        **pause_after(faults, PAUSE_AT, first), FLUSH_TIMEOUT_ENV: "5"})
    try:
        wait_for(lambda: paused(faults), timeout=300, interval=0.2, what=f"{first} paused")
        server.kill()
        release(faults)
        assert driver.wait(timeout=300) == 1, driver.output
    finally:
        if driver.process.poll() is None:
            driver.process.kill()
    assert "did not take" in driver.output and "A rerun backfills them" in driver.output, \
        driver.output
    assert f"${FLUSH_TIMEOUT_ENV}" in driver.output, driver.output

    server.start()
    rerun = resweep_run(study, server.url, "--quiet")
    assert rerun.wait(timeout=300) == 0, rerun.output
    assert_study_finished_once(study_runs, client_for, server.url, study, "server-down-at-end",
                               per_epoch_keys)
