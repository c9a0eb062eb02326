"""docker-compose.yml really up: `make cluster-test` (tests/stack/compose_stack.py) as a test.

It builds every image of the stack offline (several GB), brings the stack up, runs a
study through the compose file's submit service with a worker killed mid-study, then
`down`/`up`: many minutes of a 2-core machine, and root. So it is not part of the default
run (CI included): it runs only with RESWEEP_CLUSTER_TEST=1, and then skips, saying why,
where no Docker engine can run. tests/stack/test_compose.py validates the same files
without an engine on every run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import compose_build

pytestmark = pytest.mark.slow

OPT_IN = "RESWEEP_CLUSTER_TEST"
DRIVER = Path(__file__).with_name("compose_stack.py")


def test_compose_stack_runs_a_study_offline():
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"builds the compose stack's images (~10 GB) and runs it for minutes: "
                    f"only with {OPT_IN}=1 (or `make cluster-test`)")
    why_not = compose_build.docker_usable()
    if why_not:
        pytest.skip(f"no usable Docker engine: {why_not}")
    proc = subprocess.run([sys.executable, str(DRIVER)], capture_output=True, text=True,
                          timeout=3600, cwd=compose_build.ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert '"outcome": "every check passed"' in proc.stdout, out[-6000:]
    for line in ("4 trial runs in MLflow, one per trial_id", "every trial run FINISHED",
                 "the report is attached to the parent run",
                 "a rerun of the submit finds every trial done"):
        assert line in proc.stdout, line
