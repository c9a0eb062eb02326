"""The driver's background MLflow writer: Tune's loop queues, one thread writes.

    writer = TrackingWriter(client)
    writer.log_epoch(run_id, {"val_error": 0.1}, step=3, tags={...})   # returns at once
    writer.call(run_id, lambda: client.set_terminated(run_id), "end")  # after its epochs
    writer.close(timeout=300)   # True once everything queued is in MLflow

What is queued for a run is written in the order it was queued: consecutive epoch reports
of a run coalesce into one `log_batch` (up to MLflow's 1,000 metrics and 100 tags per
request, so several epochs at once when the writer is behind); a `call` (a trial's end:
its status, artifacts, MLflow status) runs after every report queued before it. Runs
take turns, one request each.

Nothing is dropped: the queue holds at most `max_backlog` items, and a producer that finds
it full waits for room (bounded memory; only a writer that has been failing for a while
makes Tune's loop wait). A failed write is retried, with backoff doubling up to
`retry_max_s`, until it succeeds (MLflow's own HTTP retries run first, inside the request).
A retried request carries the same rows (timestamps are taken when a report is queued),
and MLflow's store drops a metric row it already holds, so a request that reached the
store before its answer was lost is not recorded twice. A request the store rejects
(an HTTP 4xx: a deleted run, a bad value) is not retried: it is listed in `rejected`.

Items are queued under a key: a run id, or a handle that a queued call binds to the run id
once it has created the run (`resolve(key)` -> run id, given by `StudyTracker`), so even a
trial's start never waits on the store. MLflow's own retries inside one HTTP request
(minutes with its defaults) are shortened (`shorten_http_retries`, unless set): the writer
retries itself, and notices a server that is back within `retry_max_s`.

`backlog` (items not yet written) and `retrying` (a write failed and waits to be retried,
or one has been in flight for over `stall_s` seconds, i.e. inside MLflow's retries) are
for the progress line.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


# MLflow's limits per log_batch request.
MAX_METRICS_PER_BATCH = 1000
MAX_TAGS_PER_BATCH = 100

FLUSH_TIMEOUT_ENV = "RESWEEP_TRACKING_FLUSH_TIMEOUT"
DEFAULT_FLUSH_TIMEOUT_S = 300.0
# Test-only, for fault tests that kill a driver with results queued: "N:SENTINEL" makes
# the writer hold back every epoch after N (of any run; the rest is written as usual)
# until the file SENTINEL exists; when only held epochs are left it writes the number of
# items queued (epochs, trial ends) into SENTINEL.held:
# each run then has epochs 1..N in MLflow and the later ones pile up, as behind a store
# that does not answer. Unset (always, outside tests): one environment lookup per write.
HOLD_ENV = "RESWEEP_TEST_HOLD_WRITER"
# MLflow's in-request retries for the driver's client (its defaults: 7 tries, factor 2,
# about 4 minutes); the writer's own backoff takes over after them.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def flush_timeout() -> float:
    """Seconds a finished or interrupted `resweep run` waits for the tracking store to take
    what is still queued: $RESWEEP_TRACKING_FLUSH_TIMEOUT (a number >= 0 and <= 86400),
    default 300. A bad value is a ConfigError (exit status 2)."""
    from orchestrator.arg_types import seconds_from_env

    return seconds_from_env(FLUSH_TIMEOUT_ENV, DEFAULT_FLUSH_TIMEOUT_S, high=86400,
                            zero_ok=True, what="the tracking store at the end of a run")


def shorten_http_retries() -> None:
    """Set HTTP_RETRIES in this process's environment, where the user set none (MLflow
    reads them on each request)."""
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)


def hold_after() -> tuple[int, Path] | None:
    """(N, SENTINEL) of $RESWEEP_TEST_HOLD_WRITER (test-only; see HOLD_ENV), or None."""
    from models.config import ConfigError

    value = os.environ.get(HOLD_ENV)
    if not value:
        return None
    epoch, _, sentinel = value.partition(":")
    if not epoch.isdigit() or not sentinel:
        raise ConfigError(f"${HOLD_ENV} (test-only): expected N:SENTINEL with N >= 0, "
                          f"got {value!r}")
    return int(epoch), Path(sentinel)


@dataclass
class _Report:
    """One epoch result of a run, as queued."""

    step: int
    timestamp: int               # ms since the epoch, fixed when queued (see docstring)
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass
class _Call:
    """Anything else to do on a run, in order with its reports (idempotent: retried)."""

    fn: Callable[[], Any]
    what: str


class TrackingWriter:
    """See module docstring. client: an MlflowClient (only this thread uses it while the
    writer runs); resolve: key -> run id (default: keys are run ids)."""

    def __init__(self, client, *, max_backlog: int = 20_000, retry_initial_s: float = 0.5,
                 retry_max_s: float = 30.0, stall_s: float = 10.0, start: bool = True,
                 resolve: Callable[[str], str] | None = None):
        self.client = client
        self.resolve = resolve or (lambda key: key)
        self.max_backlog = max_backlog
        self.retry_initial_s, self.retry_max_s, self.stall_s = retry_initial_s, retry_max_s, stall_s
        self.requests = 0                  # write requests sent (log_batch, calls), tries included
        self.rejected: list[str] = []      # writes the store refused (not retried)
        self.last_error: str | None = None
        self._ops: dict[str, deque] = {}   # run id -> its queued items; dict order = turns
        self._backlog = 0                  # items queued or in flight
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False            # close() timed out: stop trying
        self._in_flight_since: float | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._work, name="resweep-tracking-writer",
                                        daemon=True)  # never keeps a finished driver alive
        if start:
            self._thread.start()
        else:
            self._closing = True

    def __reduce__(self):
        # Tune pickles its callbacks (which hold the writer) with the experiment state; a
        # copy is a closed writer with the same settings: queue and thread stay here.
        return (_closed_writer, (self.client, self.max_backlog, self.retry_initial_s,
                                 self.retry_max_s, self.stall_s))

    # ---- producers (Tune's loop) -----------------------------------------------------
    def log_epoch(self, run_id: str, metrics: dict[str, float], step: int,
                  tags: dict[str, str]) -> None:
        """Queue one result: its metrics at `step` and its tags (see module docstring)."""
        self._put(run_id, _Report(step, int(time.time() * 1000),
                                  {k: float(v) for k, v in metrics.items()}, dict(tags)))

    def call(self, run_id: str, fn: Callable[[], Any], what: str) -> None:
        """Queue `fn()` to run after everything queued for `run_id` so far."""
        self._put(run_id, _Call(fn, what))

    def _put(self, run_id: str, item) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the tracking writer is closed")
            while self._backlog >= self.max_backlog:   # full: wait for room, drop nothing
                self._cond.wait()
            self._ops.setdefault(run_id, deque()).append(item)
            self._backlog += 1
            self._cond.notify_all()

    # ---- state -----------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Items (epoch reports, trial ends) queued and not yet in MLflow."""
        return self._backlog

    @property
    def retrying(self) -> bool:
        """Whether the store is not taking writes: the last one failed and is retried, or
        one has been in flight for more than `stall_s` seconds."""
        since = self._in_flight_since
        return self._failing or (since is not None
                                 and time.monotonic() - since > self.stall_s)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written; False after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._backlog:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush (at most `timeout` seconds), then stop the thread. False: some items
        were not written in time; the thread gives them up after its current attempt
        (the caller says so: a rerun records them)."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._abandoned = not flushed
            self._cond.notify_all()
        if flushed:
            self._thread.join(timeout=5)
        return flushed

    # ---- the writer thread -----------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._abandoned or (not self._ops and self._closing):
                        return
                    hold = hold_after()   # None but in fault tests
                    run_id = self._next_run(hold)
                    if run_id is not None:
                        break
                    self._cond.wait(0.05 if self._ops else None)
                queue = self._ops.pop(run_id)
                unit = _take(queue, hold[0] if hold and not hold[1].exists() else None)
                if queue:
                    self._ops[run_id] = queue   # back at the end: runs take turns
            self._write(run_id, unit)
            with self._cond:
                self._backlog -= len(unit) if isinstance(unit, list) else 1
                self._cond.notify_all()

    def _next_run(self, hold: tuple[int, Path] | None) -> str | None:
        """The next run to write for (in turn), or None: nothing queued, or (fault tests)
        every queue starts with an epoch that HOLD_ENV holds back."""
        for run_id, queue in self._ops.items():
            head = queue[0]
            if (hold is None or hold[1].exists() or not isinstance(head, _Report)
                    or head.step <= hold[0]):
                return run_id
        if self._ops:   # the cue of a fault test: how much is queued
            Path(f"{hold[1]}.held").write_text(f"{self._backlog}\n")
        return None

    def _write(self, run_id: str, unit) -> None:
        """Write one unit (a list of reports, or a call) until it is done or rejected."""
        delay = self.retry_initial_s
        while True:
            self._in_flight_since = time.monotonic()
            try:
                if isinstance(unit, list):
                    self._log_reports(self.resolve(run_id), unit)
                else:
                    self.requests += 1
                    unit.fn()
                self._failing = False
                return
            except Exception as err:  # noqa: BLE001 - MLflow raises many types
                self.last_error = _first_line(err)
                if _rejected(err):
                    what = (f"epochs {unit[0].step}..{unit[-1].step}"
                            if isinstance(unit, list) else unit.what)
                    self.rejected.append(f"run {self.resolve(run_id)}, {what}: {self.last_error}")
                    self._failing = False
                    return
                self._failing = True
            finally:
                self._in_flight_since = None
            if self._abandoned:
                return
            time.sleep(delay)
            delay = min(2 * delay, self.retry_max_s)

    def _log_reports(self, run_id: str, reports: list[_Report]) -> None:
        from mlflow.entities import Metric, RunTag

        metrics = [Metric(key, value, r.timestamp, r.step)
                   for r in reports for key, value in r.metrics.items()]
        tags: dict[str, str] = {}
        for r in reports:  # a later epoch's value of a tag wins
            tags.update(r.tags)
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        for batch_metrics, batch_tags in _requests(metrics, tag_list):
            self.requests += 1
            self.client.log_batch(run_id, metrics=batch_metrics, tags=batch_tags)


def _closed_writer(client, max_backlog, retry_initial_s, retry_max_s, stall_s):
    return TrackingWriter(client, max_backlog=max_backlog, retry_initial_s=retry_initial_s,
                          retry_max_s=retry_max_s, stall_s=stall_s, start=False)


def _take(queue: deque, up_to_step: int | None = None):
    """The head of a run's queue as one unit: a call, or the leading reports that fit in
    one request (always at least one; none past `up_to_step`: HOLD_ENV)."""
    if isinstance(queue[0], _Call):
        return queue.popleft()
    reports, n_metrics, tag_keys = [], 0, set()
    while queue and isinstance(queue[0], _Report):
        head = queue[0]
        if up_to_step is not None and head.step > up_to_step:
            break
        keys = tag_keys | head.tags.keys()
        if reports and (n_metrics + len(head.metrics) > MAX_METRICS_PER_BATCH
                        or len(keys) > MAX_TAGS_PER_BATCH):
            break
        reports.append(queue.popleft())
        n_metrics, tag_keys = n_metrics + len(head.metrics), keys
    return reports


def _requests(metrics: list, tags: list) -> list[tuple[list, list]]:
    """Metrics and tags split into requests within MLflow's limits (one request unless a
    single report exceeds them); the tags go with the last metrics, so a run's last-epoch
    tag is never recorded before that epoch's metrics."""
    n = max(1, -(-len(metrics) // MAX_METRICS_PER_BATCH), -(-len(tags) // MAX_TAGS_PER_BATCH))
    metric_chunks = [metrics[i * MAX_METRICS_PER_BATCH:(i + 1) * MAX_METRICS_PER_BATCH]
                     for i in range(n)]
    tag_chunks = [tags[i * MAX_TAGS_PER_BATCH:(i + 1) * MAX_TAGS_PER_BATCH] for i in range(n)]
    tag_chunks = [[] for chunk in tag_chunks if not chunk] + [c for c in tag_chunks if c]
    return list(zip(metric_chunks, tag_chunks))


def _rejected(err: Exception) -> bool:
    """A write the store refuses for good (HTTP 4xx but 429), not a store that is away."""
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return False
    status = err.get_http_status_code()
    return 400 <= status < 500 and status != 429


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
