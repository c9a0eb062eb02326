"""One module per `resweep` sub-command.

Each module defines `HELP` (one line), `DESCRIPTION` (the `--help` text), `EXAMPLES` (the
"examples:" block that ends every `--help`), optionally `EXIT_STATUS` (its line after the
examples, when the command has more than ok / invalid input / interrupted),
`add_arguments(parser)` and `main(args) -> int`. Options that several commands share
(`--set`, `-q/--quiet`, the number types) come from `orchestrator.arg_types`. Top-level
imports stay light (no torch, ray or mlflow): they run for every `resweep --help`.
"""
