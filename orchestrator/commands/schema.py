"""`resweep schema`: the JSON Schema of study files (from the pydantic `StudySpec`)."""

from __future__ import annotations

HELP = "print the JSON Schema of study files (for editors and validators)"
DESCRIPTION = """\
Print the JSON Schema of a study file, generated from resweep's typed schema
(search_spaces.schema.StudySpec). The shipped studies start with

  # yaml-language-server: $schema=./study.schema.json

so editors with the YAML language server complete keys and flag mistakes as you type.
The schema checks shapes and types; `resweep plan STUDY` checks everything (designs,
constraints, architectures) and is the final word.
"""

EXAMPLES = """\
examples:
  resweep schema --out search_spaces/study.schema.json   # refresh the shipped copy
  resweep schema | python -m json.tool | less
"""


def add_arguments(parser) -> None:
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="write the schema to FILE instead of printing it")


def main(args) -> int:
    from models.config import ConfigError
    from search_spaces.schema import schema_text

    text = schema_text()
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as err:
            raise ConfigError(f"--out: got {args.out!r}; cannot write it: "
                              f"{err.strerror or err}") from None
    else:
        print(text, end="")
    return 0
