"""`models` and `workers` must run on a box with torch alone (DESIGN.md)."""

import subprocess
import sys

import pytest

FORBIDDEN = ("ray", "mlflow", "optuna")


@pytest.mark.parametrize("package", ["models", "workers"])
def test_package_imports_no_orchestration_stack(package):
    # A fresh interpreter: this test process may already have imported them.
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if m.name.rsplit('.', 1)[-1] != '__main__':\n"
        "        importlib.import_module(m.name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"importing {package} pulled in: {out}"


def test_cli_help_imports_no_orchestration_stack():
    code = ("import sys\nfrom orchestrator.cli import build_parser\nbuild_parser()\n"
            f"print(','.join(sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""
