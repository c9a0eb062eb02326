"""`make demo`'s job end to end: the default study on real Fashion-MNIST, real local Ray,
a real SQLite MLflow store, then the report. Slow (~8 min on 2 idle cores); CI runs it.

What it asserts is the point of the demo: the report finds the degradation (a deeper plain
net trains worse than a shallower one) and the residual fix, from measured runs, and with
three seeds in every cell it decides both by Welch t-tests over the seeds, not by a margin.
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


def _claim_row(summary: str, claim_start: str) -> list[str]:
    """The cells of the claims-table row whose claim starts with `claim_start`."""
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(claim_start):
            return cells
    raise AssertionError(f"no claim starting {claim_start!r} in summary.md")


def _verdict(summary: str, claim_start: str) -> str:
    """The verdict cell of the claims-table row whose claim starts with `claim_start`."""
    return _claim_row(summary, claim_start)[2].strip("*")


@pytest.mark.slow
@pytest.mark.ray
def test_demo_study_shows_degradation_and_its_fix(tmp_path):
    run = _resweep(["run", str(STUDY), "--quiet"], tmp_path, timeout=1800)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "18 finished" in run.stdout, run.stdout  # 3 depths x plain/residual x 3 seeds

    report = _resweep(["report", str(STUDY), "--out", str(tmp_path / "report")], tmp_path,
                      timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    summary = (tmp_path / "report" / "summary.md").read_text()
    for claim in ("Deeper plain nets have higher training error",
                  "Residual nets train better than their plain twins"):
        assert _verdict(summary, claim) == "supported", summary
        # decided by the test over seeds (every cell has 3), never the single-seed margin
        test = _claim_row(summary, claim)[-1]
        assert "Welch" in test and "single seed" not in test, summary

    # The numbers behind the verdicts: the deepest plain net trains worse than its
    # residual twin, and the report gives the tested difference with its p-value.
    errors = {m.group(1): float(m.group(2)) for m in
              re.finditer(r"\b(plain-44|resnet-44) ([\d.]+)%", summary)}
    assert errors["plain-44"] - errors["resnet-44"] > 1.0, summary
    assert re.search(r"depth 44: .*plain - residual = \+[\d.]+ pp ± [\d.]+, p = ", summary), \
        summary
    assert (tmp_path / "report" / "report.html").stat().st_size > 50_000  # figures embedded
    assert (tmp_path / "report" / "figures" / "2-degradation-map.png").exists()

    # Rerunning the finished study trains nothing and adds no runs (resumable main job).
    again = _resweep(["run", str(STUDY), "--quiet"], tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already done" in again.stdout, again.stdout
