"""Hostile inputs through the real CLI: every case of bench/hostile.py (non-text bytes, a
huge file, alias expansion, deep nesting, enormous and non-finite numbers, names that are
paths, the same in `--set` values and `resweep train --config` JSON) exits with status 2,
one line naming what the case expects, no traceback, and writes nothing.

The cases run in this process (`orchestrator.cli.main`), so the whole set takes a few
seconds; bench/hostile.py runs them as child processes and measures time and memory."""

from __future__ import annotations

import sys

import pytest

from bench.hostile import CASES, Case
from orchestrator.cli import main


def run_case(case: Case, tmp_path, capsys) -> tuple[int, str]:
    path = tmp_path / ("study.yaml" if case.suffix == ".yaml" else "trial.json")
    if case.content is not None:
        path.write_bytes(case.content)
    argv = [a.replace("{file}", str(path)) for a in case.argv]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_refused_in_one_line(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESWEEP_CACHE_DIR", str(tmp_path / "cache"))
    torch_before = "torch" in sys.modules
    status, err = run_case(case, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for expected in case.expect:
        assert expected in lines[0], (expected, lines[0][:400])
    assert len(lines[0]) < 600, lines[0][:400]  # a quoted value is cut, not echoed whole
    written = {p.name for p in tmp_path.iterdir()} - {"study.yaml", "trial.json"}
    assert not written, written  # no store, no cache, no results
    if not torch_before:  # refused before the network builders were needed
        assert "torch" not in sys.modules


def test_every_numeric_field_has_a_cap():
    """Each int/float field of the configs has an upper bound (or choices), documented in
    search_spaces/README.md "Caps"."""
    from pathlib import Path

    from models.config import ModelConfig, settings
    from workers.config import DataConfig, Resources, TrainConfig

    readme = (Path(__file__).resolve().parents[2] / "search_spaces" / "README.md").read_text()
    caps = readme.split("## Caps", 1)[1]
    for config, section in ((ModelConfig, "model"), (DataConfig, "data"),
                            (TrainConfig, "train"), (Resources, "resources")):
        for s in settings(config):
            kind = s.item if s.kind is tuple else s.kind
            if kind not in (int, float) or s.rule.choices is not None:
                continue
            upper = s.rule.le if s.rule.le is not None else s.rule.lt
            if upper is None:
                # rates and factors without a cost: only finite values (no cap)
                assert s.name in ("lr", "weight_decay", "warmup_lr", "grad_clip"), s.name
            elif upper > 1:  # a cap, not a fraction's natural bound (momentum < 1)
                assert f"{section}.{s.name}" in caps, f"{section}.{s.name} undocumented"
