"""One `resweep run`: study -> trials still to do -> Ray Tune -> MLflow -> summary.

    options = RunOptions(study_path="search_spaces/degradation-quick.yaml")
    exit_status = run_study(options)   # 0 all done, 1 some failed, 130 interrupted

What runs: every trial of a grid/ablation study whose trial_id has no done child run in
the study's experiment (so a rerun finishes an interrupted study and an extended study
runs only its new cells); for a search study, the proposals still missing to reach
`search.num_samples`. Interrupted trials continue from their last checkpoint (see
`orchestrator.tracking` for the MLflow rules).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from models.config import ConfigError
from orchestrator import __version__
from orchestrator.tracking import DONE_STATUSES
from orchestrator.tune_runner import DEFAULT_MAX_FAILURES

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
class Work:
    """What this run will do."""

    searcher: object
    num_samples: int          # trials Tune may start
    already_done: int         # done in earlier runs (skipped)
    continued: int            # interrupted trials that resume from a checkpoint
    metric: str
    mode: str
    scheduler: object | None
    epochs_per_trial: int | None
    cpu: float
    gpu: float
    max_concurrent: int | None
    epoch_cost: dict[str, float] | None = None  # trial name -> relative cost (for the ETA)


def storage_root(storage: str | None) -> str:
    """Where Ray Tune keeps trial folders and checkpoints: a URI as given, else an
    absolute local path (default ./ray_results)."""
    if storage and "://" in storage:
        return storage.rstrip("/")
    return os.path.abspath(storage or "ray_results")


def plan_grid(study, tracker, max_concurrent: int | None) -> Work:
    from orchestrator.search import TrialListSearcher, limit_concurrency
    from search_spaces import expand_study

    trials = expand_study(study)
    done = tracker.done_trial_ids()
    configs, continued, epoch_cost = [], 0, {}
    for trial in longest_first(study, trials):
        if trial.trial_id in done:
            continue
        epoch_cost[trial.name] = trial_work(study, trial)
        config = {"trial": trial.to_dict()}
        earlier = tracker.resumable(trial.trial_id)
        if earlier is not None and earlier.checkpoint:
            config["resume_from"] = earlier.checkpoint
            continued += 1
        configs.append(config)
    metric, mode = DEFAULT_METRIC
    first = trials[0] if trials else None
    resources = first.resources if first else study.resources
    return Work(limit_concurrency(TrialListSearcher(configs), max_concurrent),
                len(configs), len(trials) - len(configs), continued, metric, mode, None,
                first.train.epochs if first else None, resources.cpu, resources.gpu,
                max_concurrent, epoch_cost)


def longest_first(study, trials: list) -> list:
    """Trials in order of decreasing estimated work (MACs x length), so the long ones do
    not start last and leave the other slots idle at the end (the grid's own order is
    kept among equals)."""
    return sorted(trials, key=lambda trial: trial_work(study, trial), reverse=True)


def trial_work(study, trial) -> float:
    """Estimated work of a trial: MACs per image x optimizer steps (0 if unknown)."""
    try:
        macs = study.model_stats(trial.model).macs
    except ConfigError:
        return 0.0
    length = trial.train.iterations or (trial.train.epochs or 1) * (
        trial.data.train_size or 50_000) / trial.train.batch_size
    return macs * length


def plan_search(study, tracker, max_concurrent: int | None) -> Work:
    from orchestrator.search import (TrialResolvingSearcher, limit_concurrency,
                                     make_optuna_searcher, make_scheduler)
    from search_spaces import search_space, trial_from_params

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
                 if run is not None and run.checkpoint and run.search_params}
    optuna = make_optuna_searcher(
        search_space(study), algorithm=settings.algorithm, metric=settings.metric,
        mode=settings.mode, seed=settings.seed, evaluated=evaluated,
        first=[run.search_params for run in resumable.values()])
    searcher = TrialResolvingSearcher(
        optuna, lambda params: trial_from_params(study, params, seed), known_values=known,
        resume_from={tid: run.checkpoint for tid, run in resumable.items()})
    limit = max_concurrent or settings.max_concurrent
    epochs = study.spec.train.epochs
    if epochs is None:
        from workers import resolve_recipe

        epochs = resolve_recipe(study.spec.train.recipe, {}).epochs
    scheduler = make_scheduler(settings.scheduler, metric=settings.metric,
                               mode=settings.mode, max_epochs=epochs)
    remaining = max(0, settings.num_samples - len(done))
    return Work(limit_concurrency(searcher, limit), remaining, len(done), len(resumable),
                settings.metric, settings.mode, scheduler, epochs, study.resources.cpu,
                study.resources.gpu, limit)


def check_fits(work: Work, session) -> None:
    """An embedded Ray that can never hold one trial would wait forever: say so instead."""
    if session.address is not None:
        return  # a cluster may grow (autoscaler); Tune warns while it waits
    if work.gpu > session.gpus:
        raise ConfigError(f"resources.gpu: got {work.gpu:g}; this machine has "
                          f"{session.gpus:g} GPUs (set resources.gpu: 0, or run on a GPU "
                          "machine or cluster with --address)")
    if work.cpu > session.cpus:
        raise ConfigError(f"resources.cpu: got {work.cpu:g}; this machine has "
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
    from orchestrator.tracking import StudyTracker, default_tracking_uri, sqlite_path

    out = out or sys.stdout
    say = (lambda *a: None) if options.quiet else (lambda text: print(text, file=out, flush=True))
    started = time.monotonic()
    study = load_study(options.study_path, options.overrides)
    tracking_uri = options.tracking_uri or default_tracking_uri()
    plan = plan_search if study.design == "search" else plan_grid
    db = sqlite_path(tracking_uri)
    fresh_store = db is not None and not db.exists()
    if options.resume and fresh_store:
        raise ConfigError(f"--resume: there is no MLflow store at {db}; run the study "
                          "without --resume to start it (or pass its --tracking-uri)")
    opening = None
    if fresh_store:
        # A new SQLite store runs all of MLflow's migrations (5-15 s on 2 cores); it has
        # no earlier runs, so there is work to do: let that overlap Ray's start-up.
        opening = concurrent.futures.ThreadPoolExecutor(1).submit(
            StudyTracker.open, tracking_uri, study.name)
        tracker = work = None
    else:
        tracker = StudyTracker.open(tracking_uri, study.name)
        if options.resume and not tracker.ran_before():
            raise ConfigError(f"--resume: study {study.name!r} has no earlier runs in "
                              f"{tracking_uri}; run it without --resume to start it")
        work = plan(study, tracker, options.max_concurrent)
        if work.num_samples == 0:
            print(f"resweep run: study {study.name!r}: all {work.already_done} trials are "
                  f"already done in {tracking_uri}; nothing to run", file=out)
            return EXIT_OK

    storage = storage_root(options.storage)
    experiment_name = f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with ray_session(options.address, ship_code=options.ship_code) as session:
        if opening is not None:
            tracker = opening.result()
            work = plan(study, tracker, options.max_concurrent)
        check_fits(work, session)
        tracker.start_study(study.name, study_hash=study.source_hash,
                            study_text=study.source_text, version=__version__,
                            extra_tags={"resweep.design": study.design,
                                        "resweep.ray_storage": f"{storage}/{experiment_name}"})
        say(f"resweep run: study {study.name!r} ({study.design}): {work.num_samples} trials "
            f"to run" + (f", {work.already_done} done earlier" if work.already_done else "")
            + (f", {work.continued} continue from a checkpoint" if work.continued else "")
            + f"; {session.describe()}; {work.cpu:g} CPU / {work.gpu:g} GPU per trial"
            + (f", at most {work.max_concurrent} at a time" if work.max_concurrent else ""))
        say(f"  MLflow: {tracking_uri}  experiment {study.name!r}, parent run "
            f"{tracker.parent_run_name} ({tracker.parent_run_id})"
            + (" (continued)" if tracker.reused_parent else ""))
        say(f"  Ray results: {storage}/{experiment_name}")
        return _execute(options, study, tracker, work, storage, experiment_name, out, say,
                        started)


def _execute(options, study, tracker, work, storage, experiment_name, out, say,
             started) -> int:
    from orchestrator.progress import ProgressDisplay
    from orchestrator.tune_callbacks import MlflowTrialLogger
    from orchestrator.tune_runner import TuneJob, run_tune

    logger = MlflowTrialLogger(tracker, storage, metric=work.metric)
    callbacks = [logger]
    if not options.quiet:
        callbacks.append(ProgressDisplay(work.num_samples, work.epochs_per_trial, work.metric,
                                         work.mode, stream=out,
                                         already_done=work.already_done,
                                         epoch_cost=work.epoch_cost))
    job = TuneJob(experiment_name=experiment_name, storage_path=storage, cpu=work.cpu,
                  gpu=work.gpu, searcher=work.searcher, num_samples=work.num_samples,
                  scheduler=work.scheduler, max_failures=options.max_failures)
    try:
        with sigterm_as_interrupt():
            run_tune(job, callbacks)
    except KeyboardInterrupt:
        _close_interrupted(tracker, logger)
        tracker.end_study("interrupted", _summary_tags(logger, work.mode))
        print(f"\nresweep run: interrupted; {_count(logger, 'done')} trials finished in this "
              "run are recorded, unfinished ones continue from their last checkpoint.\n"
              f"  resume with: {options.command_line()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException:
        _close_interrupted(tracker, logger)
        tracker.end_study("failed", _summary_tags(logger, work.mode))
        raise
    # Trials Tune never finished (e.g. the searcher ran out of proposals mid-trial).
    _close_interrupted(tracker, logger)
    failed = [o for o in logger.outcomes.values() if o.status == "failed"]
    tracker.end_study("failed" if failed else "finished", _summary_tags(logger, work.mode))
    _print_summary(study, tracker, work, logger, time.monotonic() - started, out)
    return EXIT_FAILED if failed else EXIT_OK


def _close_interrupted(tracker, logger) -> None:
    """Child runs this run opened that did not end: KILLED, resweep.status=interrupted
    (their checkpoint tag lets the next run continue them)."""
    for tune_id, run_id in logger.runs.items():
        if tune_id not in logger.outcomes:
            with contextlib.suppress(Exception):
                tracker.end_trial(run_id, "interrupted")


def _count(logger, which: str) -> int:
    statuses = [o.status for o in logger.outcomes.values()]
    if which == "done":
        return sum(s in DONE_STATUSES for s in statuses)
    return statuses.count(which)


def _best(logger, mode: str):
    scored = [o for o in logger.outcomes.values()
              if o.value is not None and o.status in ("finished", "stopped")]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda o: o.value)


def _summary_tags(logger, mode: str) -> dict[str, str]:
    """The parent run's outcome tags (counts, best trial), as MLflow's sweep example."""
    tags = {f"resweep.trials.{s}": str(_count(logger, s))
            for s in ("finished", "diverged", "stopped", "failed")}
    best = _best(logger, mode)
    if best is not None:
        tags.update({"resweep.best_run_id": best.run_id or "", "resweep.best_trial": best.name,
                     f"resweep.best_{logger.metric}": f"{best.value:.6g}"})
    return tags


def _print_summary(study, tracker, work, logger, seconds: float, out) -> None:
    from orchestrator.progress import format_duration

    counts = {s: _count(logger, s) for s in ("finished", "diverged", "stopped", "failed")}
    text = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"resweep run: study {study.name!r}: {text}"
          + (f" (+{work.already_done} done earlier)" if work.already_done else "")
          + f" in {format_duration(seconds)}", file=out)
    best = _best(logger, work.mode)
    if best is not None:
        print(f"  best {work.metric}: {best.value:.4f}  {best.name}  (run {best.run_id})",
              file=out)
    print(f"  MLflow: {tracker.tracking_uri}  experiment {study.name!r}, parent run "
          f"{tracker.parent_run_name}", file=out)
    failed = [o for o in logger.outcomes.values() if o.status == "failed"]
    if failed:
        print(f"  {len(failed)} failed trial(s) (rerun the same command to retry them):",
              file=out)
        for o in failed:
            print(f"    {o.name} ({o.trial_id}), run {o.run_id}: {o.error}", file=out)
