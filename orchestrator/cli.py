"""`resweep`: declarative ablation and search studies of residual networks.

Dispatches to `orchestrator.commands.<name>`; every `--help` ends with the command's
examples and exit statuses. Invalid input is exit status 2 with no traceback: a bad
option is one line naming it, the value and what is allowed (argparse, see
`orchestrator.arg_types`); a bad study or trial (`ConfigError`) is one line per problem.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from models.config import ConfigError
from orchestrator import __version__

# Order is the order shown in --help: the usual path through a study.
COMMANDS = ("plan", "run", "train", "report", "ui", "schema")

# A command's exit statuses unless its module says otherwise (`EXIT_STATUS`).
EXIT_STATUS = "exit status: 0 ok, 2 invalid input, 130 interrupted"

EPILOG = """\
examples:
  resweep plan search_spaces/degradation-quick.yaml     # what would run, and how long
  resweep run search_spaces/degradation-quick.yaml      # run it (local Ray, ./mlflow.db)
  resweep report degradation-quick                      # figures + findings -> reports/
  resweep ui degradation-quick                          # browse the runs in MLflow

`resweep COMMAND --help` explains a command, with examples. An option means the same in
every command that has it: --set KEY=VALUE overrides a field of the study file (VALUE is
YAML), -q/--quiet prints only the outcome and errors, STUDY is a study file (or, for
report and ui, a study name).

exit status: 0 ok, 1 some trials failed, 2 invalid input, 130 interrupted (resumable)
"""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (the house rule): what was wrong
    and where to read more, not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="resweep",
        description="Run declarative architecture-search and ablation studies of residual "
                    "networks: YAML study -> Ray Tune trials -> MLflow -> degradation report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"resweep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"orchestrator.commands.{name}")
        epilog = f"{module.EXAMPLES.rstrip()}\n\n{getattr(module, 'EXIT_STATUS', EXIT_STATUS)}\n"
        p = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                           epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        status = int(args._command.main(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except ConfigError as err:
        for line in str(err).splitlines():
            print(f"resweep {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resweep {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `resweep plan --json | head`: the reader left. Python's documented idiom: point
        # stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


if __name__ == "__main__":
    sys.exit(main())
