"""The live progress line: cost-weighted ETA, the writer backlog, and a line that stays
readable and O(running) per event at 1,000 trials (pure arithmetic, no Ray run)."""

import io
import time
from types import SimpleNamespace

import pytest

from orchestrator.progress import ProgressDisplay


def _trial(tune_id: str, name: str):
    return SimpleNamespace(trial_id=tune_id, config={"trial": {"name": name}}, last_result={})


def _display(epoch_cost):
    display = ProgressDisplay(total=2, epochs_per_trial=2, metric="val_error", mode="min",
                              stream=io.StringIO(), epoch_cost=epoch_cost)
    display.started_at = time.monotonic() - 60.0  # one epoch of the deep net took 60 s
    deep = _trial("t1", "deep")
    display.on_trial_start(0, [], deep)
    display.on_trial_result(0, [], deep, {"epoch": 1, "val_error": 0.5})
    return display


def test_eta_weights_epochs_by_trial_cost():
    # Work: deep 3 per epoch, shallow 1; 2 epochs each -> 8 in all, 3 done in 60 s:
    # 5 left at 3 per 60 s -> 100 s (unweighted it would say 3 epochs x 60 s = 180 s).
    eta = _display({"deep": 3.0, "shallow": 1.0}).eta_seconds()
    assert eta == pytest.approx(100.0, rel=0.02)


def test_eta_without_costs_counts_epochs():
    eta = _display(None).eta_seconds()
    assert eta == pytest.approx(180.0, rel=0.02)
    assert "ETA 3m0" in _display(None).line()


def test_the_line_shows_the_writer_backlog_and_an_unanswering_server():
    writer = SimpleNamespace(backlog=3, retrying=False)
    display = _display(None)
    display.writer = writer
    assert "writer" not in display.line()            # a writer that keeps up: not news
    writer.backlog = 250
    assert display.line().endswith("| writer backlog 250")
    writer.retrying = True
    assert display.line().endswith(
        "| tracking server not answering, retrying (writer backlog 250)")


def _finished(tune_id: str, name: str):
    trial = _trial(tune_id, name)
    trial.last_result = {"status": "finished"}
    return trial


def test_at_1000_trials_the_line_has_counts_rate_eta_and_backlog():
    total, epochs = 1000, 5
    stream = io.StringIO()
    writer = SimpleNamespace(backlog=40, retrying=False)
    display = ProgressDisplay(total=total, epochs_per_trial=epochs, metric="val_error",
                              mode="min", stream=stream, writer=writer)
    for i in range(600):                  # 600 trials run to the end, 1 fails
        trial = _finished(f"t{i}", f"resnet-110-B-w2.5-seed-with-a-long-suffix-{i}")
        display.on_trial_start(0, [], trial)
        for epoch in range(1, epochs + 1):
            display.on_trial_result(0, [], trial, {"epoch": epoch, "val_error": 1 - i / 1e4})
        if i == 7:
            display.on_trial_error(0, [], trial)
        else:
            display.on_trial_complete(0, [], trial)
    running = [_trial(f"r{i}", f"r{i}") for i in range(2)]
    for trial in running:                 # 2 running, 2 epochs of 5 each
        display.on_trial_start(0, [], trial)
        display.on_trial_result(0, [], trial, {"epoch": 2, "val_error": 0.99})
    display.started_at = time.monotonic() - 1200.0   # 20 minutes into the run
    assert display.counts() == {"done": 599, "running": 2, "failed": 1, "pending": 398}
    assert display.trials_per_minute() == pytest.approx(600 / 20, rel=0.01)
    # Work left: 398 pending x 5 epochs + 2 running x 3 = 1996 epochs at 3004 per 1200 s.
    assert display.eta_seconds() == pytest.approx(1996 / (3004 / 1200), rel=0.01)
    line = display.line()
    assert line.startswith("[20m00s] done 599/1000 running 2 pending 398 failed 1 | 30 trials/min")
    assert "| best val_error 0.9401 (resnet-110-B-w2.5-seed-with-a-long-su...)" in line
    assert "| ETA 13m" in line and line.endswith("| writer backlog 40")
    assert len(line) <= 180   # bounded: the name is cut, the rest are numbers


def test_off_a_terminal_a_line_is_printed_when_the_counts_change_not_per_result():
    stream = io.StringIO()
    display = ProgressDisplay(total=3, epochs_per_trial=50, metric="val_error", mode="min",
                              stream=stream)
    trial = _finished("t0", "a")
    display.on_trial_start(0, [], trial)
    for epoch in range(1, 51):
        display.on_trial_result(0, [], trial, {"epoch": epoch, "val_error": 0.5})
        display.on_step_end(0, [])
    display.on_trial_complete(0, [], trial)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2   # started, then finished: 50 results printed nothing
    assert "done 0/3 running 1 pending 2" in lines[0]
    assert "done 1/3 running 0 pending 2" in lines[1]


def test_on_a_terminal_the_line_is_cut_to_its_width(monkeypatch):
    import os

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("shutil.get_terminal_size", lambda *a: os.terminal_size((60, 24)))
    stream = Terminal()
    display = ProgressDisplay(total=1000, epochs_per_trial=5, metric="val_error", mode="min",
                              stream=stream, writer=SimpleNamespace(backlog=900, retrying=True))
    display.on_trial_start(0, [], _trial("t0", "a-trial-name"))
    shown = stream.getvalue().split("\r\033[K")[-1]
    assert shown.startswith("[0s] done 0/1000 running 1 pending 999") and len(shown) == 59
