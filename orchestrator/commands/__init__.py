"""One module per `resweep` sub-command.

Each module defines `HELP` (one line), `DESCRIPTION` (the `--help` text),
`add_arguments(parser)` and `main(args) -> int`. Top-level imports stay light (no torch,
ray or mlflow): they run for every `resweep --help`.
"""
