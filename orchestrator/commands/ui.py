"""`resweep ui`: MLflow's UI on the study store, opened at the training-runs view."""

from __future__ import annotations

import argparse

HELP = "browse the runs in MLflow's UI (127.0.0.1)"
DESCRIPTION = """\
Start MLflow's UI (`mlflow server`) on the study store, bound to 127.0.0.1, and print the
address of each study's runs table, where trials are nested under their `resweep run`.
Stop it with Ctrl-C.

MLflow 3 opens on a GenAI overview by default; the printed address
(/#/experiments/<id>/runs?workflowType=machine_learning) goes straight to the training
runs. There: Columns -> add params model.depth, model.residual, model.shortcut; Group by
model.depth, then model.residual (residual alone averages the depths together); the chart
view plots train_error against epoch for the selected runs. Report links open here when
`resweep report --ui-url` names this address (the default port is 5000).

With an http(s) --tracking-uri the server already exists: only the addresses are printed.
"""

EXAMPLES = """\
examples:
  resweep ui                                            # every study in ./mlflow.db
  resweep ui degradation-quick --port 5001              # a study by name ...
  resweep ui search_spaces/degradation-quick.yaml       # ... or by its file, as `report`
  resweep ui degradation --tracking-uri http://127.0.0.1:5000   # print its address only
"""

EXIT_STATUS = ("exit status: 0 stopped with Ctrl-C (or addresses printed), 1 the server "
               "failed or died,\n2 invalid input (unknown study, port in use, a tracking "
               "server that does not answer)")


class _MovedToPositional(argparse.Action):
    """`--study NAME` was ui's own spelling; every command now takes the study as STUDY."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"argument --study: got {values!r}; the study is now the positional "
                     f"STUDY, as in the other commands: resweep ui {values}")


def add_arguments(parser) -> None:
    from orchestrator.arg_types import port

    parser.add_argument("study", nargs="?", metavar="STUDY", default=None,
                        help="a study YAML file or a study name (= its MLflow experiment): "
                             "print only its address (default: every study in the store)")
    parser.add_argument("--tracking-uri", metavar="URI", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///./mlflow.db)")
    parser.add_argument("--port", type=port, default=5000, metavar="N",
                        help="port on 127.0.0.1, 1..65535 (default: 5000)")
    parser.add_argument("--study", action=_MovedToPositional, metavar="NAME",
                        help=argparse.SUPPRESS)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does


def main(args) -> int:
    import signal

    from analysis.runs import find_experiment, open_store, resolve_study
    from analysis.store import list_experiments
    from orchestrator.tracking_store import answering_tracking_uri

    tracking_uri = answering_tracking_uri(args.tracking_uri)
    client = open_store(tracking_uri)
    if args.study:
        experiments = [find_experiment(client, resolve_study(args.study)[0], tracking_uri)]
    else:
        experiments = [e for e in list_experiments(client) if e.name != "Default"] or \
            list_experiments(client)

    if tracking_uri.startswith(("http://", "https://")):
        _print_addresses(tracking_uri.rstrip("/"), experiments)
        return 0

    print(f"resweep ui: starting MLflow on {tracking_uri} ...", flush=True)
    # Ctrl-C and SIGTERM stop the server group (a shell's `&` would leave SIGINT ignored).
    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _interrupt))}
    try:
        return _serve(tracking_uri, args.port, experiments)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(tracking_uri: str, port: int, experiments) -> int:
    """Run the server until Ctrl-C (exit 0) or until it dies by itself (exit 1)."""
    import sys

    from analysis.server import start_ui

    try:
        server = start_ui(tracking_uri, port)
    except RuntimeError as err:
        print(f"resweep ui: error: {err}", file=sys.stderr)
        return 1
    try:
        _print_addresses(server.base_url, experiments)
        print(f"(MLflow UI at {server.base_url}; Ctrl-C to stop; server log: "
              f"{server.log_path})", flush=True)
        status = server.process.wait()
        print(f"resweep ui: mlflow server exited with status {status}:\n{server.log_tail()}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("resweep ui: stopping MLflow", flush=True)
        server.stop()
        server.log_path.unlink(missing_ok=True)  # a clean stop: its log holds nothing new
        return 0
    finally:
        server.stop()


def _print_addresses(base_url: str, experiments) -> None:
    from analysis.report import runs_view_url

    for experiment in experiments:
        print(f"{experiment.name}: {runs_view_url(base_url, experiment.experiment_id)}",
              flush=True)
