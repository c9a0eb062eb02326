"""`resweep run` (not implemented yet)."""

HELP = "(not implemented yet)"
DESCRIPTION = HELP


def add_arguments(parser):
    pass


def main(args) -> int:
    print("resweep run: not implemented yet")
    return 1
