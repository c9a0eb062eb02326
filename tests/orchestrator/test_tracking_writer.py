"""The background tracking writer against real MLflow stores: a SQLite file (coalescing,
order, MLflow's per-request limits, flush on close, the bounded queue, a rejected write)
and a real `mlflow server` killed and restarted on the same port mid-write (every epoch
arrives exactly once). Requests are counted by a subclass of the real MlflowClient."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking_writer import (MAX_METRICS_PER_BATCH, TrackingWriter,
                                          flush_timeout)
from models.config import ConfigError

KEYS = ("train_loss", "train_error", "val_loss", "val_error", "lr", "elapsed_s",
        "images_per_s", "epoch", "iteration", "test_loss", "test_error")  # 11 per epoch


class CountingClient(MlflowClient):
    """The real client, recording how many metrics each log_batch request carried."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[str, int, int]] = []   # (run id, metrics, tags)

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        self.batches.append((run_id, len(metrics), len(tags)))
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)


def metrics_of(epoch: int, run: int = 0) -> dict[str, float]:
    return {key: epoch + i / 100 + run / 10_000 for i, key in enumerate(KEYS)}


@pytest.fixture
def sqlite_client(tmp_path):
    client = CountingClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("writer")
    return client, experiment


def make_runs(client, experiment, n: int) -> list[str]:
    return [client.create_run(experiment, run_name=f"run-{i}").info.run_id for i in range(n)]


def held(writer: TrackingWriter) -> threading.Event:
    """Stop the writer thread on a call of its own until the event is set, so what is
    queued meanwhile is pending at once."""
    gate = threading.Event()
    writer.call("gate", gate.wait, "gate")
    return gate


def check_history(client, run_id: str, epochs: int, run: int = 0) -> None:
    """Every key has each epoch exactly once, with the value logged for it."""
    for i, key in enumerate(KEYS):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in history] == list(range(1, epochs + 1)), key
        assert [value for _, value in history] == \
            pytest.approx([e + i / 100 + run / 10_000 for e in range(1, epochs + 1)])


def test_pending_epochs_of_several_runs_coalesce_into_one_request_per_run(sqlite_client):
    client, experiment = sqlite_client
    runs = make_runs(client, experiment, 3)
    writer = TrackingWriter(client)
    gate = held(writer)
    for epoch in range(1, 31):                # interleaved, as trials running side by side
        for r, run_id in enumerate(runs):
            writer.log_epoch(run_id, metrics_of(epoch, r), epoch,
                             {"resweep.last_epoch": str(epoch)})
    assert writer.backlog == 1 + 90
    client.batches.clear()
    gate.set()
    assert writer.close(timeout=60)
    # 30 epochs x 11 metrics = 330 per run: one request each, all epochs of the run.
    assert sorted(client.batches) == sorted((run_id, 330, 1) for run_id in runs)
    for r, run_id in enumerate(runs):
        check_history(client, run_id, 30, r)
        assert client.get_run(run_id).data.tags["resweep.last_epoch"] == "30"
    assert writer.backlog == 0 and not writer.retrying and not writer.rejected


def test_requests_respect_mlflows_limit_and_a_trial_end_comes_after_its_epochs(
        sqlite_client):
    client, experiment = sqlite_client
    (run_id,) = make_runs(client, experiment, 1)
    writer = TrackingWriter(client)
    gate = held(writer)
    for epoch in range(1, 201):               # 2,200 metrics pending for one run
        writer.log_epoch(run_id, metrics_of(epoch), epoch, {"resweep.last_epoch": str(epoch)})
    seen_at_end = []
    writer.call(run_id, lambda: seen_at_end.append(
        len(client.get_metric_history(run_id, "val_error"))), "end")
    for epoch in range(201, 204):             # queued after the end: written after it
        writer.log_epoch(run_id, metrics_of(epoch), epoch, {"resweep.last_epoch": str(epoch)})
    client.batches.clear()
    gate.set()
    assert writer.close(timeout=60)
    per_epoch = len(KEYS)
    whole = MAX_METRICS_PER_BATCH // per_epoch  # 90 epochs fit in one request
    assert [n for _, n, _ in client.batches] == \
        [whole * per_epoch, whole * per_epoch, (200 - 2 * whole) * per_epoch, 3 * per_epoch]
    assert seen_at_end == [200]
    check_history(client, run_id, 203)
    assert client.get_run(run_id).data.tags["resweep.last_epoch"] == "203"


def test_close_flushes_and_then_refuses_more(sqlite_client):
    client, experiment = sqlite_client
    runs = make_runs(client, experiment, 2)
    writer = TrackingWriter(client)
    for epoch in range(1, 6):
        for r, run_id in enumerate(runs):
            writer.log_epoch(run_id, metrics_of(epoch, r), epoch, {})
    assert writer.close(timeout=60)
    for r, run_id in enumerate(runs):
        check_history(client, run_id, 5, r)
    assert not writer._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        writer.log_epoch(runs[0], metrics_of(6), 6, {})


def test_a_full_queue_makes_the_producer_wait_and_drops_nothing(sqlite_client, wait_for):
    client, experiment = sqlite_client
    (run_id,) = make_runs(client, experiment, 1)
    writer = TrackingWriter(client, max_backlog=5)
    gate = held(writer)

    def produce():
        for epoch in range(1, 21):
            writer.log_epoch(run_id, metrics_of(epoch), epoch, {})

    producer = threading.Thread(target=produce)
    producer.start()
    wait_for(lambda: writer.backlog == 5, 10, 0.05, "a full queue")
    time.sleep(0.3)
    assert producer.is_alive() and writer.backlog == 5   # waiting for room, not dropping
    gate.set()
    producer.join(timeout=60)
    assert not producer.is_alive()
    assert writer.close(timeout=60)
    check_history(client, run_id, 20)


def test_a_rejected_write_is_listed_and_the_others_go_on(sqlite_client):
    client, experiment = sqlite_client
    (run_id,) = make_runs(client, experiment, 1)
    writer = TrackingWriter(client)
    writer.log_epoch("0" * 32, metrics_of(1), 1, {})   # no such run: the store says 404
    for epoch in range(1, 4):
        writer.log_epoch(run_id, metrics_of(epoch), epoch, {})
    assert writer.close(timeout=60)
    assert len(writer.rejected) == 1 and "0" * 32 in writer.rejected[0]
    check_history(client, run_id, 3)


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "1e9"])
def test_flush_timeout_must_be_a_sensible_number(monkeypatch, value):
    monkeypatch.setenv("RESWEEP_TRACKING_FLUSH_TIMEOUT", value)
    with pytest.raises(ConfigError, match="RESWEEP_TRACKING_FLUSH_TIMEOUT"):
        flush_timeout()
    monkeypatch.setenv("RESWEEP_TRACKING_FLUSH_TIMEOUT", "0")
    assert flush_timeout() == 0


def test_a_server_killed_and_restarted_mid_write_gets_every_epoch_once(
        tmp_path, mlflow_server, wait_for):
    epochs, n_runs = 40, 3
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts",
                       tmp_path / "logs") as server:
        client = CountingClient(tracking_uri=server.url)
        runs = make_runs(client, client.create_experiment("outage"), n_runs)
        writer = TrackingWriter(client, retry_initial_s=0.2, retry_max_s=1.0, stall_s=1.0)

        def produce():   # ~20 reports/s for ~6 s, across the outage
            for epoch in range(1, epochs + 1):
                for r, run_id in enumerate(runs):
                    writer.log_epoch(run_id, metrics_of(epoch, r), epoch,
                                     {"resweep.last_epoch": str(epoch)})
                time.sleep(0.15)

        producer = threading.Thread(target=produce)
        producer.start()
        wait_for(lambda: writer.requests >= 5, 30, 0.05, "the first writes")
        server.kill()                              # SIGKILL: a crash, mid-write
        wait_for(lambda: writer.retrying, 30, 0.1, "the writer to notice the outage")
        time.sleep(2)
        producer.join(timeout=120)   # done while the server is down: it never waited on it
        assert not producer.is_alive()
        assert writer.backlog > 0
        server.start()                             # same port, same store
        assert writer.close(timeout=300), writer.last_error
        assert not writer.rejected
        for r, run_id in enumerate(runs):
            check_history(client, run_id, epochs, r)
            assert client.get_run(run_id).data.tags["resweep.last_epoch"] == str(epochs)


def test_a_pickled_copy_is_a_closed_writer_and_the_original_goes_on(sqlite_client):
    import pickle

    client, experiment = sqlite_client   # Tune pickles its callbacks, which hold the writer
    (run_id,) = make_runs(client, experiment, 1)
    writer = TrackingWriter(client, max_backlog=7)
    copy = pickle.loads(pickle.dumps(writer))
    assert copy.max_backlog == 7 and copy.backlog == 0
    with pytest.raises(RuntimeError, match="closed"):
        copy.log_epoch(run_id, metrics_of(1), 1, {})
    writer.log_epoch(run_id, metrics_of(1), 1, {})
    assert writer.close(timeout=60)
    check_history(client, run_id, 1)
