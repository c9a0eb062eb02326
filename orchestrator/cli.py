"""`resweep`: declarative ablation and search studies of residual networks.

Dispatches to `orchestrator.commands.<name>`; turns invalid input (`ConfigError`) into
one readable message per problem and exit status 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from models.config import ConfigError
from orchestrator import __version__

# Order is the order shown in --help: the usual path through a study.
COMMANDS = ("plan", "run", "train", "report", "ui", "schema")

EPILOG = """\
typical use:
  resweep plan search_spaces/degradation-quick.yaml     # what would run, and how long
  resweep run  search_spaces/degradation-quick.yaml     # run it (local Ray, ./mlflow.db)
  resweep report degradation-quick                      # figures + findings -> reports/
  resweep ui                                            # browse the runs in MLflow

exit status: 0 ok, 1 some trials failed, 2 invalid input, 130 interrupted (resumable)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resweep",
        description="Run declarative architecture-search and ablation studies of residual "
                    "networks: YAML study -> Ray Tune trials -> MLflow -> degradation report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"resweep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"orchestrator.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_command=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    try:
        return int(args._command.main(args) or 0)
    except ConfigError as err:
        for line in str(err).splitlines():
            print(f"resweep {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resweep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
