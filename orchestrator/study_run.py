"""One `resweep run`: study -> trials still to do -> Ray Tune -> MLflow -> summary.

    options = RunOptions(study_path="search_spaces/degradation-quick.yaml")
    exit_status = run_study(options)   # 0 all done, 1 some failed, 130 interrupted

What runs: every trial of a grid/ablation study whose trial_id has no done child run in
the study's experiment (so a rerun finishes an interrupted study and an extended study
runs only its new cells); for a search study, the proposals still missing to reach
`search.num_samples`; for an onset study, the design's next steps (`orchestrator.onset_search`).
Interrupted trials continue from their last checkpoint (see
`orchestrator.tracking` for the MLflow rules).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from analysis.store import Tag, best_metric_tag, trials_tag
from models.config import ConfigError
from orchestrator import __version__
from orchestrator.tune_run import DEFAULT_MAX_FAILURES, TuneJob, run_tune, trial_envelope
from workers.results import (DONE_STATUSES, END_STATUSES, FAILED, FINISHED, INTERRUPTED,
                             STOPPED)

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
DEFAULT_METRIC = ("val_error", "min")  # what "best so far" shows for grid studies


@dataclass
class RunOptions:
    """The `resweep run` command line as data."""

    study_path: str
    overrides: list[str] = field(default_factory=list)
    address: str | None = None
    tracking_uri: str | None = None
    storage: str | None = None
    max_concurrent: int | None = None
    max_failures: int = DEFAULT_MAX_FAILURES
    resume: bool = False
    quiet: bool = False
    ship_code: bool = False

    def command_line(self) -> str:
        """The command that continues this run (printed when interrupted)."""
        parts = ["resweep", "run", self.study_path]
        for item in self.overrides:
            parts += ["--set", item]
        for flag, value in (("--address", self.address), ("--tracking-uri", self.tracking_uri),
                            ("--storage", self.storage),
                            ("--max-concurrent", self.max_concurrent),
                            ("--max-failures", None if self.max_failures == DEFAULT_MAX_FAILURES
                             else self.max_failures)):
            if value is not None:
                parts += [flag, str(value)]
        if self.ship_code:
            parts.append("--ship-code")
        return shlex.join(parts + ["--resume"])


@dataclass
class RunPlan:
    """What this `resweep run` will do: the searcher handing out its trials, how many,
    with what resources, and what the progress display needs."""

    searcher: object
    num_samples: int          # trials Tune may start
    already_done: int         # done in earlier runs (skipped)
    continued: int            # interrupted trials that resume from a checkpoint
    metric: str
    mode: str
    scheduler: object | None
    epochs_per_trial: int | None   # None: the trials run a number of iterations
    cpu: float
    gpu: float
    max_concurrent: int | None
    epoch_cost: dict[str, float] | None = None  # trial name -> work of one epoch (ETA)
    outcome: Callable[[], list[str]] | None = None  # the design's closing lines (onset)


def storage_root(storage: str | None) -> str:
    """Where Ray Tune keeps trial folders and checkpoints: a URI as given, else an
    absolute local path (default ./ray_results)."""
    if storage and "://" in storage:
        return storage.rstrip("/")
    return os.path.abspath(storage or "ray_results")


def plan_grid(study, tracker, max_concurrent: int | None) -> RunPlan:
    """The trials of a grid/ablation study not done yet, longest first (the cost model's
    order, `search_spaces.plan.longest_first`); interrupted ones resume."""
    from orchestrator.search import TrialListSearcher, limit_concurrency
    from search_spaces import expand_study
    from search_spaces.plan import longest_first, study_epochs, trial_work

    trials = expand_study(study)
    done = tracker.done_trial_ids()
    configs, continued, epoch_cost = [], 0, {}
    for trial in longest_first(study, trials):
        if trial.trial_id in done:
            continue
        epoch_cost[trial.name] = trial_work(study, trial) / (trial.train.epochs or 1)
        earlier = tracker.resumable(trial.trial_id)
        resume_from = earlier.resume_from if earlier is not None else None
        continued += bool(resume_from)
        configs.append(trial_envelope(trial, resume_from=resume_from))
    metric, mode = DEFAULT_METRIC
    resources = trials[0].resources if trials else study.resources
    return RunPlan(limit_concurrency(TrialListSearcher(configs), max_concurrent),
                   len(configs), len(trials) - len(configs), continued, metric, mode, None,
                   study_epochs(study), resources.cpu, resources.gpu, max_concurrent,
                   epoch_cost)


def plan_search(study, tracker, max_concurrent: int | None) -> RunPlan:
    """Optuna's proposals still missing to reach `search.num_samples`, warm-started with
    the trials done earlier; interrupted ones are proposed first and resume."""
    from orchestrator.search import (TrialResolvingSearcher, limit_concurrency,
                                     make_optuna_searcher, make_scheduler)
    from search_spaces import search_space, trial_from_params
    from search_spaces.plan import study_epochs

    settings = study.search
    seed = study.seeds[0] if study.seeds else 0
    done_runs = {tid: run for tid, run in tracker.earlier.items()
                 if run.status in DONE_STATUSES}
    done = [run for run in done_runs.values() if run.search_params]
    evaluated = [(run.search_params, run.metrics[settings.metric]) for run in done
                 if settings.metric in run.metrics]
    known = {tid: run.metrics.get(settings.metric) for tid, run in done_runs.items()}
    resumable = {tid: tracker.resumable(tid) for tid in tracker.earlier}
    resumable = {tid: run for tid, run in resumable.items()
                 if run is not None and run.resume_from and run.search_params}
    optuna = make_optuna_searcher(
        search_space(study), algorithm=settings.algorithm, metric=settings.metric,
        mode=settings.mode, seed=settings.seed, evaluated=evaluated,
        first=[run.search_params for run in resumable.values()])
    searcher = TrialResolvingSearcher(
        optuna, lambda params: trial_from_params(study, params, seed), known_values=known,
        resume_from={tid: run.resume_from for tid, run in resumable.items()})
    limit = max_concurrent or settings.max_concurrent
    epochs = study_epochs(study)
    scheduler = make_scheduler(settings.scheduler, metric=settings.metric,
                               mode=settings.mode, max_epochs=epochs)
    remaining = max(0, settings.num_samples - len(done))
    return RunPlan(limit_concurrency(searcher, limit), remaining, len(done), len(resumable),
                   settings.metric, settings.mode, scheduler, epochs, study.resources.cpu,
                   study.resources.gpu, limit)


def check_fits(plan: RunPlan, session) -> None:
    """An embedded Ray that can never hold one trial would wait forever: say so instead."""
    if session.address is not None:
        return  # a cluster may grow (autoscaler); Tune warns while it waits
    if plan.gpu > session.gpus:
        raise ConfigError(f"resources.gpu: got {plan.gpu:g}; this machine has "
                          f"{session.gpus:g} GPUs (set resources.gpu: 0, or run on a GPU "
                          "machine or cluster with --address)")
    if plan.cpu > session.cpus:
        raise ConfigError(f"resources.cpu: got {plan.cpu:g}; this machine has "
                          f"{session.cpus:g} CPUs")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """`ray job stop`, `kill` and schedulers send SIGTERM: treat it like Ctrl-C."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a test calling us from a thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_study(options: RunOptions, out: TextIO | None = None) -> int:
    """See module docstring. Raises ConfigError for invalid input (exit status 2)."""
    from search_spaces import load_study

    from orchestrator.ray_session import ray_session
    from analysis.store import default_tracking_uri, sqlite_path
    from orchestrator.tracking import StudyTracker

    from orchestrator.tracking_writer import flush_timeout, hold_after

    out = out or sys.stdout
    say = (lambda *a: None) if options.quiet else (lambda text: print(text, file=out, flush=True))
    started = time.monotonic()
    study = load_study(options.study_path, options.overrides)
    flush_timeout(), hold_after()  # a bad value fails before anything starts
    tracking_uri = options.tracking_uri or default_tracking_uri()
    from orchestrator.onset_search import plan_onset

    make_plan = {"search": plan_search, "onset": plan_onset}.get(study.design, plan_grid)
    db = sqlite_path(tracking_uri)
    fresh_store = db is not None and not db.exists()
    if options.resume and fresh_store:
        raise ConfigError(f"--resume: there is no MLflow store at {db}; run the study "
                          "without --resume to start it (or pass its --tracking-uri)")
    opening = None
    if fresh_store:
        # A new SQLite store runs all of MLflow's migrations (5-15 s on 2 cores); it has
        # no earlier runs, so there is something to do: let that overlap Ray's start-up.
        opening = concurrent.futures.ThreadPoolExecutor(1).submit(
            StudyTracker.open, tracking_uri, study.name)
        tracker = plan = None
    else:
        tracker = StudyTracker.open(tracking_uri, study.name)
        if options.resume and not tracker.ran_before():
            raise ConfigError(f"--resume: study {study.name!r} has no earlier runs in "
                              f"{tracking_uri}; run it without --resume to start it")
        plan = make_plan(study, tracker, options.max_concurrent)
        if plan.num_samples == 0:
            print(f"resweep run: study {study.name!r}: all {plan.already_done} trials are "
                  f"already done in {tracking_uri}; nothing to run", file=out)
            return EXIT_OK

    storage = storage_root(options.storage)
    experiment_name = f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with ray_session(options.address, ship_code=options.ship_code) as session:
        if opening is not None:
            tracker = opening.result()
            plan = make_plan(study, tracker, options.max_concurrent)
        check_fits(plan, session)
        tracker.start_study(study.name, study_hash=study.source_hash,
                            study_text=study.source_text, version=__version__,
                            extra_tags={Tag.DESIGN: study.design,
                                        Tag.RAY_STORAGE: f"{storage}/{experiment_name}",
                                        Tag.OVERRIDES: json.dumps(list(options.overrides))})
        say(f"resweep run: study {study.name!r} ({study.design}): "
            + ("at most " if study.design == "onset" else "") + f"{plan.num_samples} trials "
            f"to run" + (f", {plan.already_done} done earlier" if plan.already_done else "")
            + (f", {plan.continued} continue from a checkpoint" if plan.continued else "")
            + f"; {session.describe()}; {plan.cpu:g} CPU / {plan.gpu:g} GPU per trial"
            + (f", at most {plan.max_concurrent} at a time" if plan.max_concurrent else ""))
        say(f"  MLflow: {tracking_uri}  experiment {study.name!r}, parent run "
            f"{tracker.parent_run_name} ({tracker.parent_run_id})"
            + (" (continued)" if tracker.reused_parent else ""))
        say(f"  Ray results: {storage}/{experiment_name}")
        return _execute(options, study, tracker, plan, storage, experiment_name, out, say,
                        started)


def _execute(options, study, tracker, plan, storage, experiment_name, out, say,
             started) -> int:
    from orchestrator.progress import ProgressDisplay
    from orchestrator.tune_callbacks import MlflowTrialLogger

    tracker.start_writer()  # epochs and trial ends: queued, Tune's loop never waits on MLflow
    writer = tracker.writer
    logger = MlflowTrialLogger(tracker, storage, metric=plan.metric)
    callbacks = [logger]
    if not options.quiet:
        callbacks.append(ProgressDisplay(plan.num_samples, plan.epochs_per_trial, plan.metric,
                                         plan.mode, stream=out,
                                         already_done=plan.already_done,
                                         epoch_cost=plan.epoch_cost, writer=writer))
    job = TuneJob(experiment_name=experiment_name, storage_path=storage, cpu=plan.cpu,
                  gpu=plan.gpu, searcher=plan.searcher, num_samples=plan.num_samples,
                  scheduler=plan.scheduler, max_failures=options.max_failures)
    try:
        with sigterm_as_interrupt():
            run_tune(job, callbacks)
    except KeyboardInterrupt:
        _close_interrupted(tracker, logger)
        if not _close_writer(tracker, options, logger):
            return EXIT_FAILED
        tracker.end_study(INTERRUPTED, _summary_tags(logger, plan.mode))
        print(f"\nresweep run: interrupted; {_count(logger, 'done')} trials finished in this "
              "run are recorded, unfinished ones continue from their last checkpoint.\n"
              f"  resume with: {options.command_line()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException:
        _close_interrupted(tracker, logger)
        if _close_writer(tracker, options, logger):
            tracker.end_study(FAILED, _summary_tags(logger, plan.mode))
        raise
    # Trials Tune never finished (e.g. the searcher ran out of proposals mid-trial).
    _close_interrupted(tracker, logger)
    if not _close_writer(tracker, options, logger):
        return EXIT_FAILED
    failed = [o for o in logger.outcomes.values() if o.status == FAILED]
    tracker.end_study(FAILED if failed or writer.rejected else FINISHED,
                      _summary_tags(logger, plan.mode))
    _print_summary(study, tracker, plan, logger, time.monotonic() - started, out)
    for line in writer.rejected[:10]:
        print(f"resweep run: MLflow refused a write ({line}); it is not recorded", file=out)
    return EXIT_FAILED if failed or writer.rejected else EXIT_OK


def _close_writer(tracker, options, logger) -> bool:
    """Write what is still queued, waiting at most $RESWEEP_TRACKING_FLUSH_TIMEOUT s (a
    second Ctrl-C stops the wait); then the outcomes name their runs' ids (trial starts
    were queued too). False, with a message, when the store did not take it:
    the caller exits 1 and leaves the parent run open for the rerun that records the rest
    (the trials left incomplete continue from their last recorded checkpoint, or again)."""
    from orchestrator.tracking_writer import FLUSH_TIMEOUT_ENV, flush_timeout

    writer, wait_s = tracker.writer, flush_timeout()
    try:
        if writer.flush(min(2.0, wait_s)):
            logger.resolve_run_ids()
            return tracker.close_writer(0)
        print(f"resweep run: writing {writer.backlog} queued results to MLflow "
              f"({tracker.tracking_uri}); waiting up to {wait_s:g} s (${FLUSH_TIMEOUT_ENV})",
              file=sys.stderr, flush=True)
        if tracker.close_writer(max(0.0, wait_s - 2.0)):
            logger.resolve_run_ids()
            return True
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        tracker.writer = None
        writer.close(0)
    why = writer.last_error or "no answer yet"
    print(f"resweep run: the tracking store {tracker.tracking_uri} did not take "
          f"{writer.backlog} queued results ({why}); they are not in MLflow.\n"
          "  A rerun backfills them once the store answers: trials with missing epochs "
          "continue from their last recorded checkpoint (or run again).\n"
          f"  rerun: {options.command_line()}", file=sys.stderr)
    return False


def _close_interrupted(tracker, logger) -> None:
    """Child runs this run opened that did not end: KILLED, resweep.status=interrupted
    (their checkpoint tag lets the next run continue them)."""
    for tune_id, run_id in logger.runs.items():
        if tune_id not in logger.outcomes:
            with contextlib.suppress(Exception):
                tracker.end_trial(run_id, INTERRUPTED)


def _count(logger, which: str) -> int:
    statuses = [o.status for o in logger.outcomes.values()]
    if which == "done":
        return sum(s in DONE_STATUSES for s in statuses)
    return statuses.count(which)


def _best(logger, mode: str):
    scored = [o for o in logger.outcomes.values()
              if o.value is not None and o.status in (FINISHED, STOPPED)]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda o: o.value)


def _summary_tags(logger, mode: str) -> dict[str, str]:
    """The parent run's outcome tags (counts, best trial), as MLflow's sweep example."""
    tags = {trials_tag(s): str(_count(logger, s)) for s in END_STATUSES}
    best = _best(logger, mode)
    if best is not None:
        tags.update({Tag.BEST_RUN_ID: best.run_id or "", Tag.BEST_TRIAL: best.name,
                     best_metric_tag(logger.metric): f"{best.value:.6g}"})
    return tags


def _print_summary(study, tracker, plan, logger, seconds: float, out) -> None:
    from search_spaces.plan import format_duration

    counts = {s: _count(logger, s) for s in END_STATUSES}
    text = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"resweep run: study {study.name!r}: {text}"
          + (f" (+{plan.already_done} done earlier)" if plan.already_done else "")
          + f" in {format_duration(seconds)}", file=out)
    best = _best(logger, plan.mode)
    if best is not None:
        print(f"  best {plan.metric}: {best.value:.4f}  {best.name}  (run {best.run_id})",
              file=out)
    print(f"  MLflow: {tracker.tracking_uri}  experiment {study.name!r}, parent run "
          f"{tracker.parent_run_name}", file=out)
    for line in plan.outcome() if plan.outcome else ():
        print(f"  {line}", file=out)
    failed = [o for o in logger.outcomes.values() if o.status == FAILED]
    if failed:
        print(f"  {len(failed)} failed trial(s) (rerun the same command to retry them):",
              file=out)
        for o in failed:
            print(f"    {o.name} ({o.trial_id}), run {o.run_id}: {o.error}", file=out)
