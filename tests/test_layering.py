"""The layers of ARCHITECTURE.md: `models` and `workers` run on a box with torch alone,
and no module imports a layer above its own."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("ray", "mlflow", "optuna")
ROOT = Path(__file__).resolve().parents[1]
# Low to high: a module may import its own layer and those to its left (ARCHITECTURE.md).
LAYERS = ("models", "workers", "search_spaces", "analysis", "orchestrator")


def _imported_layers(path: Path):
    """(line, module) of every absolute import of a project layer in `path`, also the
    ones inside functions (a lazy import up the stack is still a dependency)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            if name and name.split(".")[0] in LAYERS:
                yield node.lineno, name


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for rank, layer in enumerate(LAYERS):
        files = sorted((ROOT / layer).rglob("*.py"))
        assert files, f"layer {layer}/ has no modules"
        for path in files:
            for line, name in _imported_layers(path):
                if LAYERS.index(name.split(".")[0]) > rank:
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert upward == []


def test_layer_check_sees_an_upward_import(tmp_path):
    # The check above must be able to fail: a lazy import of orchestrator is found.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from orchestrator.tracking import StudyTracker\n")
    assert list(_imported_layers(bad)) == [(2, "orchestrator.tracking")]


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
