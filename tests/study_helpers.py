"""Shared pieces of the study tests: a small valid study, a fixed calibration, the CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))

# A valid grid over tiny nets (width 0.25: 4/8/16 channels): loads in milliseconds.
SMALL_STUDY = """\
name: small
data: {dataset: fashion-mnist, train_size: 256, val_size: 64, augment: false}
train: {recipe: cosine, epochs: 1, threads: 1}
model: {family: cifar, width: 0.25}
design: grid
space:
  residual: [false, true]
  depth: [8, 14]
"""

# Known throughput so estimates are exact numbers in tests (1 GMAC/s training).
FIXED_RATE = 1e9


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def fixed_calibration(tmp_path, monkeypatch):
    """A calibration cache with a known CPU throughput, in a private folder."""
    folder = tmp_path / "cache"
    folder.mkdir()
    entry = {"device": "cpu", "macs_per_s": FIXED_RATE, "images_per_s": 100.0,
             "measured": "fixed-for-tests"}
    cache = {f"cpu/threads={n}": {**entry, "threads": n} for n in (1, 2, 4, 8, 16)}
    (folder / "calibration.json").write_text(json.dumps(cache))
    monkeypatch.setenv("RESWEEP_CACHE_DIR", str(folder))
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`resweep ARGV...` in-process: (exit status, stdout, stderr)."""
    from orchestrator.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
