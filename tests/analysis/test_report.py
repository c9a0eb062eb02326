"""`resweep report` on a real MLflow store: files, figures, claims, MLflow artifacts, exit
codes. The store is written per the team contract (tests/analysis/conftest.py)."""

import contextlib
import io
import re
import xml.etree.ElementTree as ET

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image  # installed with matplotlib (a dependency of it)

from orchestrator.cli import main as resweep

FULL, MINIMAL, SEARCH = "report-full", "report-minimal", "report-search"
ALL_FIGURES = ["1-training-curves", "2-degradation-map", "3-shortcuts", "4-layer-responses",
               "5-gradient-flow"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_store, record_study, degradation_trials, fake_trial):
    """FULL: plain + residual A/B/C at depths 8/20, 2 seeds, probes, one diverged
    plain-26. MINIMAL: plain + residual A at depths 8/20, one seed, no probes."""
    root = tmp_path_factory.mktemp("report-store")
    uri = new_store(root)
    full = degradation_trials(seeds=2, shortcuts=("A", "B", "C"), depths=(8, 20))
    full.append(fake_trial(26, False, 0, 0.9, 0.9, status="diverged"))
    record_study(uri, root, FULL, full)
    record_study(uri, root, MINIMAL, degradation_trials(seeds=1, depths=(8, 20), probes=False,
                                                        test_every=4))
    # Like an Optuna search: every trial its own configuration (lr varies), some stopped
    # early by ASHA.
    search = [fake_trial(depth, residual, 0, 0.1 + lr, 0.13 + lr, shortcut=shortcut, lr=lr,
                         probes=False, status="stopped" if lr > 0.2 else "finished")
              for depth, residual, shortcut, lr in [(8, True, "A", 0.05), (20, True, "B", 0.12),
                                                    (8, False, "A", 0.25), (20, False, "A", 0.08),
                                                    (14, True, "C", 0.3)]]
    record_study(uri, root, SEARCH, search)
    return uri


def collapse(text: str) -> str:
    """Claims are wrapped for the terminal: compare with whitespace collapsed."""
    return " ".join(text.split())


def run_report(capsys, *argv):
    code = resweep(["report", *argv])
    captured = capsys.readouterr()
    return code, collapse(captured.out), collapse(captured.err)


@pytest.fixture(scope="module")
def full_report(store, tmp_path_factory):
    """`resweep report FULL` once (it takes seconds); the tests below inspect its output."""
    out_dir = tmp_path_factory.mktemp("full-report")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = resweep(["report", FULL, "--tracking-uri", store, "--out", str(out_dir)])
    return code, collapse(stdout.getvalue()), collapse(stderr.getvalue()), out_dir


def test_full_study_report(store, full_report):
    code, out, err, tmp_path = full_report
    assert code == 0, err
    # The claims table is printed, with the verdicts this data must give.
    assert re.search(r"SUPPORTED +Deeper plain nets have higher training error", out)
    assert re.search(r"SUPPORTED +Residual nets train better than their plain twins", out)
    assert re.search(r"SUPPORTED +Shortcut options A, B and C", out)
    assert re.search(r"SUPPORTED +Residual nets' layer responses", out)
    assert "degradation onset (final training error against depth): plain: onset at depth 20: " \
        "training error +" in out
    assert str(tmp_path / "report.html") in out

    html = (tmp_path / "report.html").read_text()
    for name in ALL_FIGURES:
        assert f'<figure id="{name}"><img' in html
        assert (tmp_path / "figures" / f"{name}.png").is_file()
        assert (tmp_path / "figures" / f"{name}.svg").is_file()
    # Self-contained: figures inline, nothing fetched from elsewhere.
    assert html.count('src="data:image/png;base64,') == len(ALL_FIGURES)
    assert not re.search(r'(src|href)="(?!data:|http://127\.0\.0\.1:5000/#/|#)', html)
    assert "<th>verdict</th>" in html and html.count('class="supported"') == 5
    assert "Shortcut options (Table 3 style)" in html
    # Every trial links to its MLflow run; the diverged one is listed but not counted.
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(FULL)
    trials = client.search_runs([experiment.experiment_id], "tags.`resweep.kind` = 'trial'")
    assert len(trials) == 17
    for run in trials:
        assert f"#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}" in html
    assert 'class="status-diverged"' in html and "not counted" in html
    assert f"name: {FULL}" in html   # the study file

    summary = (tmp_path / "summary.md").read_text()
    assert "| claim | paper | verdict | evidence | test |" in summary
    assert "![Degradation map](figures/2-degradation-map.png)" in summary


def test_figures_are_valid_images(full_report):
    code, _, _, tmp_path = full_report
    assert code == 0
    for name in ALL_FIGURES:
        png = tmp_path / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            width, height = image.size
        assert 1000 <= width <= 2400 and 500 <= height <= 1200, (name, image.size)
        root = ET.parse(tmp_path / "figures" / f"{name}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        # svg.fonttype none keeps text as text: axis labels are searchable.
        assert "(%)" in (tmp_path / "figures" / f"{name}.svg").read_text() or name in (
            "4-layer-responses", "5-gradient-flow")


def test_report_is_logged_to_the_latest_parent_run(store, full_report):
    code, out, _, _ = full_report
    assert code == 0
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(FULL)
    parent = client.search_runs([experiment.experiment_id], "tags.`resweep.kind` = 'study'")[0]
    assert f"logged to MLflow run {parent.info.run_name}" in out
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/summary.md", "report/figures"} <= logged
    figures = {f.path for f in client.list_artifacts(parent.info.run_id, "report/figures")}
    assert {f"report/figures/{n}.png" for n in ALL_FIGURES} <= figures


def test_minimal_study_draws_only_what_its_data_supports(store, tmp_path, capsys):
    code, out, err = run_report(capsys, MINIMAL, "--tracking-uri", store, "--out",
                                str(tmp_path), "--no-log")
    assert code == 0, err
    drawn = sorted(p.stem for p in (tmp_path / "figures").glob("*.png"))
    assert drawn == ["1-training-curves", "2-degradation-map"]
    html = (tmp_path / "report.html").read_text()
    assert "3-shortcuts" not in html and "Shortcut options (Table 3 style)" not in html
    assert re.search(r"NOT TESTABLE +Shortcut options A, B and C", out)
    assert re.search(r"NOT TESTABLE +Residual nets' layer responses", out)
    # One seed: the margin rule is used, and said so.
    assert re.search(r"SUPPORTED +Deeper plain nets", out) and "single seed" in out
    # Test error only at the end: the curves show validation error, test error as stars.
    assert "validation error" in html


def test_search_study_without_comparable_cells(store, tmp_path, capsys):
    code, out, err = run_report(capsys, SEARCH, "--tracking-uri", store, "--out",
                                str(tmp_path), "--no-log")
    assert code == 0, err
    # No configuration was trained at two depths: no degradation map, nothing testable.
    assert sorted(p.stem for p in (tmp_path / "figures").glob("*.png")) == ["1-training-curves"]
    assert out.count("NOT TESTABLE") == 5 and "3 finished, 2 stopped" in out
    html = (tmp_path / "report.html").read_text()
    assert html.count('class="status-stopped"') == 2


def test_missing_experiment_exits_2_naming_the_store(store, capsys):
    code, out, err = run_report(capsys, "no-such-study", "--tracking-uri", store)
    assert code == 2 and "Traceback" not in err
    assert "no experiment named 'no-such-study'" in err and store in err
    assert FULL in err and MINIMAL in err and SEARCH in err   # what exists instead


def test_study_file_resolves_to_its_name(store, capsys):
    code, _, err = run_report(capsys, "search_spaces/degradation-quick.yaml",
                              "--tracking-uri", store)
    assert code == 2 and "no experiment named 'degradation-quick'" in err


def test_missing_study_file_and_missing_store_exit_2(tmp_path, capsys):
    code, _, err = run_report(capsys, str(tmp_path / "nope.yaml"))
    assert code == 2 and "no study file" in err
    code, _, err = run_report(capsys, FULL, "--tracking-uri",
                              f"sqlite:///{tmp_path / 'absent.db'}")
    assert code == 2 and "no MLflow store at" in err
    assert not (tmp_path / "absent.db").exists()
