"""Live progress of a study: done / running / pending / failed, best so far, ETA.

`ProgressDisplay` is a Tune callback in the driver. On a terminal it rewrites one status
line (at most twice a second); otherwise (CI logs, files) it prints a line whenever the
counts change, and at least every 30 s. `--quiet` turns it off.

The ETA counts work: remaining epochs of all trials / epochs finished per second so far in
this run (trials running in parallel raise that rate), each epoch weighted by its trial's
relative cost (`epoch_cost`, e.g. MACs) when the caller knows it. Unweighted, the first
epochs of a longest-first grid (the deep nets) would make the short trials left at the
end look as slow as them.

With the tracking writer (`orchestrator.tracking_writer`) the line adds "writer backlog N"
when N >= BACKLOG_SHOWN results wait to be written, and "tracking server not answering,
retrying" while writes fail (a change of that state is printed at once off a terminal).

At cluster scale (1,000s of trials) the line stays short and cheap: counts, trials per
minute finished in this run, the best trial's name cut to BEST_NAME_CHARS, and, on a
terminal, the whole line cut to its width (a wrapped line cannot be rewritten in place).
Every Tune event costs O(trials running), never O(trials): counts and the work of
finished trials are kept as running sums.

    [41m10s] done 612/1000 running 2 pending 386 failed 0 | 14.9 trials/min
      | best val_error 0.1123 (resnet-56-B-w1.0-s3) | ETA 26m03s | writer backlog 40
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from ray.tune import Callback

from orchestrator.tune_run import envelope_name
from orchestrator.tune_callbacks import end_status, metric_value, result_epoch
from search_spaces.plan import format_duration
from workers.results import DONE_STATUSES, FAILED, RUNNING

BACKLOG_SHOWN = 20  # a writer that keeps up has a few results in flight: not news
BEST_NAME_CHARS = 40


class ProgressDisplay(Callback):
    """See module docstring. total: trials this run will start; epochs_per_trial: the
    planned length of each (None where only iterations are known: ETA by trials);
    epoch_cost: {trial name: relative cost of one epoch} for every trial to run, or None
    (all equal); writer: the tracking writer (its `backlog` and `retrying`), or None."""

    def __init__(self, total: int, epochs_per_trial: int | None, metric: str, mode: str,
                 stream: TextIO | None = None, already_done: int = 0,
                 epoch_cost: dict[str, float] | None = None, writer=None):
        self.total = total
        self.epochs_per_trial = epochs_per_trial or 1
        self.count_epochs = epochs_per_trial is not None
        self.metric, self.mode = metric, mode
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.already_done = already_done
        self.started_at = time.monotonic()
        self.status: dict[str, str] = {}   # Tune trial id -> a workers.results status
        self.epochs: dict[str, int] = {}   # Tune trial id -> epochs done
        self.names: dict[str, str] = {}    # Tune trial id -> trial name
        self.epoch_cost = epoch_cost or {}
        self._mean_cost = (sum(self.epoch_cost.values()) / len(self.epoch_cost)
                           if self.epoch_cost else 1.0)
        self._total_work = self.epochs_per_trial * (
            sum(self.epoch_cost.values()) if len(self.epoch_cost) == total else total)
        self._tally = {"done": 0, "running": 0, "failed": 0}   # status counts, kept
        self._running: set[str] = set()
        self._finished_work = 0.0          # cost-weighted planned epochs of ended trials
        self.writer = writer
        self.work_this_run = 0.0           # cost-weighted epochs finished in this run
        self.best: tuple[float, str] | None = None
        self._last_state: tuple | None = None
        self._last_print = 0.0

    # Tune hooks ---------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.names[trial.trial_id] = envelope_name(trial.config)
        self._set_status(trial.trial_id, RUNNING)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = result_epoch(result)
        before = self.epochs.get(trial.trial_id)
        self.names.setdefault(trial.trial_id, envelope_name(trial.config))
        cost = self._cost(trial.trial_id)
        if before is not None and epoch > before:
            self.work_this_run += (epoch - before) * cost
        elif before is None:
            self.work_this_run += cost  # first result seen here (maybe a resumed trial)
        self.epochs[trial.trial_id] = epoch
        value = metric_value(result, self.metric)
        if value is not None and (self.best is None or self._better(value, self.best[0])):
            self.best = (value, envelope_name(trial.config))
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._set_status(trial.trial_id, end_status(trial.last_result or {}))
        self._show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._set_status(trial.trial_id, FAILED)
        self._show(force=True)

    def on_step_end(self, iteration, trials, **info):
        self._show()

    def on_experiment_end(self, trials, **info):
        self._show(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    # bookkeeping --------------------------------------------------------------------
    def _set_status(self, tune_id: str, status: str) -> None:
        """Move a trial to `status`, keeping the counts and the finished work."""
        old = self.status.get(tune_id)
        if old is not None:
            self._tally[_bucket(old)] -= 1
            if old != RUNNING:
                self._finished_work -= self._cost(tune_id) * self.epochs_per_trial
        self.status[tune_id] = status
        self._tally[_bucket(status)] += 1
        if status == RUNNING:
            self._running.add(tune_id)
        else:
            self._running.discard(tune_id)
            self._finished_work += self._cost(tune_id) * self.epochs_per_trial

    # display ------------------------------------------------------------------------
    def _better(self, value: float, best: float) -> bool:
        return value < best if self.mode == "min" else value > best

    def counts(self) -> dict[str, int]:
        done, running, failed = (self._tally[k] for k in ("done", "running", "failed"))
        return {"done": done, "running": running, "failed": failed,
                "pending": max(0, self.total - done - running - failed)}

    def _cost(self, tune_id: str) -> float:
        """Relative cost of one epoch of this trial (1.0 when costs are unknown)."""
        if not self.epoch_cost:
            return 1.0
        return self.epoch_cost.get(self.names.get(tune_id, ""), self._mean_cost)

    def trials_per_minute(self) -> float | None:
        """Trials ended (done or failed) in this run per minute so far."""
        elapsed = time.monotonic() - self.started_at
        ended = self._tally["done"] + self._tally["failed"]
        return 60.0 * ended / elapsed if ended and elapsed > 0 else None

    def eta_seconds(self) -> float | None:
        elapsed = time.monotonic() - self.started_at
        if self.work_this_run == 0 or elapsed <= 0:
            return None
        done_work = self._finished_work + sum(
            self._cost(k) * min(self.epochs.get(k, 0), self.epochs_per_trial)
            for k in self._running)
        remaining = max(0.0, self._total_work - done_work)
        return remaining / (self.work_this_run / elapsed)

    def line(self) -> str:
        c = self.counts()
        parts = [f"[{format_duration(time.monotonic() - self.started_at)}]",
                 f"done {c['done']}/{self.total}", f"running {c['running']}",
                 f"pending {c['pending']}", f"failed {c['failed']}"]
        if self.already_done:
            parts.append(f"(+{self.already_done} done earlier)")
        rate = self.trials_per_minute()
        if rate is not None:
            parts.append(f"| {rate:.3g} trials/min")
        if self.best is not None:
            name = self.best[1]
            if len(name) > BEST_NAME_CHARS:
                name = name[:BEST_NAME_CHARS - 3] + "..."
            parts.append(f"| best {self.metric} {self.best[0]:.4f} ({name})")
        eta = self.eta_seconds()
        if eta is not None and c["done"] + c["failed"] < self.total:
            parts.append(f"| ETA {format_duration(eta)}")
        if self.writer is not None:
            backlog = self.writer.backlog
            if self.writer.retrying:
                parts.append(f"| tracking server not answering, retrying "
                             f"(writer backlog {backlog})")
            elif backlog >= BACKLOG_SHOWN:
                parts.append(f"| writer backlog {backlog}")
        return " ".join(parts)

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if force or now - self._last_print >= 0.5:
                width = shutil.get_terminal_size().columns - 1
                self.stream.write("\r\033[K" + self.line()[:max(20, width)])
                self.stream.flush()
                self._last_print = now
            return
        state = (tuple(self._tally.values()), self.writer is not None and self.writer.retrying)
        if state != self._last_state or now - self._last_print >= 30:
            print(self.line(), file=self.stream, flush=True)
            self._last_state, self._last_print = state, now


def _bucket(status: str) -> str:
    """The count a status belongs to (done: finished, diverged, stopped)."""
    if status == RUNNING:
        return "running"
    return "done" if status in DONE_STATUSES else "failed"
