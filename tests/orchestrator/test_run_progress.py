"""The live progress line's ETA: cost-weighted epochs (pure arithmetic, no Ray run)."""

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
