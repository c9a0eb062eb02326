"""`resweep run STUDY`: run a study's trials on Ray Tune and record them in MLflow."""

from __future__ import annotations

HELP = "run a study's trials on Ray Tune, tracked in MLflow (resumable)"
DESCRIPTION = """\
Run every trial of a study (grid, ablation) or an Optuna search over its space, on an
embedded local Ray sized to this machine or on a Ray cluster (--address), and record
each trial as a nested MLflow run under one parent run per invocation.

Defaults: MLflow store sqlite:///$PWD/mlflow.db (or $MLFLOW_TRACKING_URI), Ray results
and checkpoints under ./ray_results.

Nothing is lost: rerunning the same command (or adding --resume) skips trials that are
already done in the study's MLflow experiment and continues interrupted ones from their
last checkpoint, so an extended study runs only its new cells. A trial whose worker dies
is restarted from its checkpoint (up to --max-failures times).
"""

EXAMPLES = """\
examples:
  resweep run search_spaces/degradation-quick.yaml
  resweep run search_spaces/degradation-quick.yaml --dry-run   # the plan; what is done
  resweep run search_spaces/degradation-quick.yaml --set repeats=3 --max-concurrent 2 -q
  RAY_AUTH_MODE=token resweep run study.yaml --address auto \\
      --tracking-uri http://127.0.0.1:5000 --storage /shared/ray_results
"""

EXIT_STATUS = """\
exit status: 0 every trial ran (finished, diverged or stopped early), 1 some trials
failed (listed), 2 invalid input, 130 interrupted (resumable)
"""


def add_arguments(parser) -> None:
    from orchestrator.arg_types import (add_quiet_option, add_set_option, non_negative_int,
                                        positive_int)
    from orchestrator.tune_run import DEFAULT_MAX_FAILURES

    parser.add_argument("study", metavar="STUDY", help="a study file (search_spaces/*.yaml)")
    add_set_option(parser)
    parser.add_argument("--address", metavar="auto|HOST:PORT",
                        help="run on an existing Ray cluster (`ray start --head`); export "
                             "RAY_AUTH_MODE=token if the cluster uses token auth "
                             "(default: an embedded local Ray)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                             "sqlite:///$PWD/mlflow.db)")
    parser.add_argument("--storage", metavar="PATH|URI",
                        help="Ray results and checkpoints (default ./ray_results); on a "
                             "cluster, a path every node shares or an object-store URI")
    parser.add_argument("--max-concurrent", type=positive_int, metavar="N",
                        help="at most N trials at a time (default: as many as the "
                             "resources allow, or the study's search.max_concurrent)")
    parser.add_argument("--max-failures", type=non_negative_int,
                        default=DEFAULT_MAX_FAILURES, metavar="N",
                        help="restarts of a trial whose worker dies (default %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an earlier, interrupted run of the study (a plain "
                             "rerun does the same; --resume refuses a study never run)")
    parser.add_argument("--ship-code", action="store_true",
                        help="with --address: send this checkout's packages to the cluster "
                             "as a runtime environment (when the nodes do not have resweep "
                             "installed)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (trials, cost) and exit")
    add_quiet_option(parser, "the final summary")


def main(args) -> int:
    _check_services(args)
    if args.dry_run:
        return _dry_run(args)
    from orchestrator.study_run import RunOptions, run_study

    options = RunOptions(study_path=args.study, overrides=list(args.overrides),
                         address=args.address, tracking_uri=args.tracking_uri,
                         storage=args.storage, max_concurrent=args.max_concurrent,
                         max_failures=args.max_failures, resume=args.resume,
                         quiet=args.quiet, ship_code=args.ship_code)
    return run_study(options)


def _check_services(args) -> None:
    """Fail fast (ConfigError, exit 2), before anything starts or is written, when the
    tracking server or the Ray cluster does not answer within $RESWEEP_CONNECT_TIMEOUT.
    Only the start is checked: once trials run, an outage is waited for (MLflow's retries)."""
    import os

    from orchestrator.arg_types import connect_timeout
    from orchestrator.ray_session import check_ray_address
    from orchestrator.tracking_store import answering_tracking_uri

    answering_tracking_uri(args.tracking_uri)
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address and not args.dry_run:
        check_ray_address(address, connect_timeout(),
                          "--address" if args.address else "$RAY_ADDRESS")


def _dry_run(args) -> int:
    """The plan as `resweep plan` prints it, and how many of its trials an earlier run
    already did (those would be skipped). Starts nothing and creates no store."""
    from search_spaces import expand_study, load_study
    from search_spaces.plan import format_table, plan_study

    study = load_study(args.study, args.overrides)
    print(format_table(plan_study(study)))
    done = _done_earlier(study, args.tracking_uri)
    if done is not None and study.design in ("grid", "ablation"):
        trial_ids = {t.trial_id for t in expand_study(study)}
        print(f"\nresweep run would start {len(trial_ids - done)} trials; "
              f"{len(trial_ids & done)} are already done")
    if done is not None and study.design == "onset":
        from analysis.store import default_tracking_uri
        from orchestrator.onset_search import resume_line
        from orchestrator.tracking import StudyTracker

        tracker = StudyTracker.open(args.tracking_uri or default_tracking_uri(), study.name)
        print(f"\n{resume_line(study, tracker)}")
    return 0


def _done_earlier(study, tracking_uri: str | None) -> set[str] | None:
    """trial_ids done in the study's experiment, or None if there is no store/experiment.
    A store that cannot be opened is a ConfigError (exit 2), as for a real run."""
    from analysis.store import default_tracking_uri, sqlite_path

    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return None  # opening it would create an empty store (and MLflow is not imported)
    from orchestrator.tracking import StudyTracker
    from orchestrator.tracking_store import open_client

    if open_client(uri).get_experiment_by_name(study.name) is None:
        return None
    return StudyTracker.open(uri, study.name).done_trial_ids()
