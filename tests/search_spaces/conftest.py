"""Fixtures of the study tests: a small valid study, writing study files, the CLI in-process.

The small study (tests/search_spaces/data/small.yaml) is a grid over tiny nets (width 0.25:
4/8/16 channels) that loads in milliseconds. A module that needs its text at import time
(to build `parametrize` cases) reads that file itself.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

SMALL_STUDY = Path(__file__).parent / "data" / "small.yaml"


@pytest.fixture(scope="session")
def small_study() -> str:
    """The text of the small valid study."""
    return SMALL_STUDY.read_text()


@pytest.fixture
def study_file(tmp_path):
    """study_file(text, name="study.yaml") -> tmp_path/NAME holding the dedented text."""
    def write(text: str, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path
    return write


@pytest.fixture
def run_cli(capsys):
    """run_cli(*argv) -> (exit status, stdout, stderr) of `resweep ARGV...` in-process."""
    def run(*argv: str) -> tuple[int, str, str]:
        from orchestrator.cli import main

        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run
