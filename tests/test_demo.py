"""`make demo`'s job end to end: the default study on real Fashion-MNIST, real local Ray,
a real SQLite MLflow store, then the report. Slow (~5 min on 2 idle cores); CI runs it.

What it asserts is the point of the demo: the report finds the degradation (a deeper plain
net trains worse than a shallower one) and the residual fix, from measured runs.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "search_spaces" / "degradation-quick.yaml"
RESWEEP = [sys.executable, "-m", "orchestrator.cli"]


def _resweep(args, cwd, timeout):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(RESWEEP + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _verdict(summary: str, claim_start: str) -> str:
    """The verdict cell of the claims-table row whose claim starts with `claim_start`."""
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(claim_start):
            return cells[2].strip("*")
    raise AssertionError(f"no claim starting {claim_start!r} in summary.md")


@pytest.mark.slow
@pytest.mark.ray
def test_demo_study_shows_degradation_and_its_fix(tmp_path):
    run = _resweep(["run", str(STUDY), "--quiet"], tmp_path, timeout=1800)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 finished" in run.stdout, run.stdout

    report = _resweep(["report", str(STUDY), "--out", str(tmp_path / "report")], tmp_path,
                      timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert _verdict(summary, "Deeper plain nets have higher training error") == "supported"
    assert _verdict(summary, "Residual nets train better than their plain twins") == "supported"

    # The numbers behind the verdicts: plain-56 trains worse than plain-20, and worse than
    # its residual twin, by more than the stated 1-point margin.
    errors = {m.group(1): float(m.group(2)) for m in
              re.finditer(r"\b(plain-56|resnet-56) ([\d.]+)%", summary)}
    assert errors["plain-56"] - errors["resnet-56"] > 1.0, summary
    assert (tmp_path / "report" / "report.html").stat().st_size > 50_000  # figures embedded
    assert (tmp_path / "report" / "figures" / "2-degradation-map.png").exists()

    # Rerunning the finished study trains nothing and adds no runs (resumable main job).
    again = _resweep(["run", str(STUDY), "--quiet"], tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already done" in again.stdout, again.stdout
