"""`resweep report` on a real MLflow store: files, figures, claims, MLflow artifacts, exit
codes, and the report's numbers against the store's. The store is written by the tracking
code (tests/analysis/conftest.py)."""

import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
import scipy.stats as scipy_stats  # pinned in requirements.txt
from PIL import Image  # installed with matplotlib (a dependency of it)

from analysis.report import build_report
from analysis.runs import load_study_runs
from orchestrator.cli import main as resweep

RESWEEP = str(Path(sys.executable).with_name("resweep"))
FULL, MINIMAL, SEARCH = "report-full", "report-minimal", "report-search"
ALL_FIGURES = ["1-training-curves", "2-degradation-map", "3-shortcuts", "4-layer-responses",
               "5-gradient-flow"]


@pytest.fixture(scope="module")
def store(analysis_store):
    """The session store: FULL (plain + residual A/B/C at depths 8/20, 2 seeds, probes, one
    diverged plain-26), MINIMAL (plain + residual A at 8/20, one seed, no probes), SEARCH
    (every trial its own lr, some stopped). Read only: `--no-log`, or a copy."""
    return analysis_store.uri


def collapse(text: str) -> str:
    """Claims are wrapped for the terminal: compare with whitespace collapsed."""
    return " ".join(text.split())


def run_report(capsys, *argv):
    code = resweep(["report", *argv])
    captured = capsys.readouterr()
    return code, collapse(captured.out), collapse(captured.err)


@pytest.fixture(scope="module")
def logged_store(analysis_store, copy_store, tmp_path_factory):
    """A copy of the session store for the report that is logged to MLflow."""
    return copy_store(analysis_store, tmp_path_factory.mktemp("logged") / "store")


@pytest.fixture(scope="module")
def full_report(logged_store, tmp_path_factory):
    """`resweep report FULL` once, logged to MLflow (it takes seconds), as its own process
    (see `copy_store`); the tests below inspect its output."""
    out_dir = tmp_path_factory.mktemp("full-report")
    proc = subprocess.run([RESWEEP, "report", FULL, "--tracking-uri", logged_store,
                           "--out", str(out_dir)], capture_output=True, text=True, timeout=300)
    return proc.returncode, collapse(proc.stdout), collapse(proc.stderr), out_dir


def artifacts_on_disk(uri: str, run_id: str) -> Path:
    """A run's artifact folder, as the store's database records it (read from disk: this
    process's MLflow caches artifact locations by run id, the same in a copy)."""
    return Path(MlflowClient(uri).get_run(run_id).info.artifact_uri.removeprefix("file://"))


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
    # Plus the design views this grid supports: depth x shortcut map (2), Pareto (1).
    assert html.count('src="data:image/png;base64,') == len(ALL_FIGURES) + 3
    for name in ("7-depth-factor-map", "8-depth-factor-curves", "12-pareto-fronts"):
        assert f'<figure id="{name}"><img' in html
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


def test_report_is_logged_to_the_latest_parent_run(logged_store, full_report, store):
    code, out, _, _ = full_report
    assert code == 0
    client = MlflowClient(logged_store)
    experiment = client.get_experiment_by_name(FULL)
    parent = client.search_runs([experiment.experiment_id], "tags.`resweep.kind` = 'study'")[0]
    assert f"logged to MLflow run {parent.info.run_name}" in out
    report = artifacts_on_disk(logged_store, parent.info.run_id) / "report"
    assert {"report.html", "summary.md", "figures"} <= {p.name for p in report.iterdir()}
    assert {f"{n}.png" for n in ALL_FIGURES} <= {p.name for p in (report / "figures").iterdir()}
    # ...in the copy: the session store's parent run is untouched.
    original = artifacts_on_disk(store, parent.info.run_id)
    assert original != report.parent and (original / "study.yaml").is_file()
    assert not (original / "report").exists()


def test_minimal_study_draws_only_what_its_data_supports(store, tmp_path, capsys):
    code, out, err = run_report(capsys, MINIMAL, "--tracking-uri", store, "--out",
                                str(tmp_path), "--no-log")
    assert code == 0, err
    drawn = sorted(p.stem for p in (tmp_path / "figures").glob("*.png"))
    # ... and the Pareto fronts, which every design with sizes supports.
    assert drawn == ["1-training-curves", "12-pareto-fronts", "2-degradation-map"]
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
    # No configuration was trained at two depths: no degradation map, nothing testable
    # (the Pareto fronts need no comparable cells).
    assert sorted(p.stem for p in (tmp_path / "figures").glob("*.png")) == \
        ["1-training-curves", "12-pareto-fronts"]
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


# ---- the report's numbers are the store's ----------------------------------------------

def finals_in_mlflow(uri: str, study: str) -> list[dict]:
    """Each trial run of `study` as MLflow has it: its cell, status and the value of the
    highest step of train_error and test_error (read with MlflowClient, not analysis)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    out = []
    for run in client.search_runs([experiment.experiment_id], "tags.`resweep.kind` = 'trial'"):
        params, row = run.data.params, {"run_id": run.info.run_id}
        residual = params["model.residual"] == "True"
        row["cell"] = (residual, int(params["model.depth"]),
                       params["model.shortcut"] if residual else None)
        row["status"] = run.data.tags["resweep.status"]
        for key in ("train_error", "test_error"):
            history = client.get_metric_history(run.info.run_id, key)
            row[key] = max(history, key=lambda m: m.step).value
        out.append(row)
    return out


def means_by_cell(finals: list[dict], key: str) -> dict[tuple, tuple[int, float, float]]:
    """cell -> (seeds, mean, half-width of the 95% t-interval) over the finished trials."""
    cells: dict[tuple, list[float]] = {}
    for row in finals:
        if row["status"] == "finished":
            cells.setdefault(row["cell"], []).append(row[key])
    out = {}
    for cell, values in cells.items():
        n, mean = len(values), sum(values) / len(values)
        sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else math.nan
        out[cell] = (n, mean, scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
                     if n > 1 else math.nan)
    return out


def html_rows(html: str, start: str, end: str) -> list[list[str]]:
    """The cells of each body row of the first table between two headings."""
    section = html[html.index(start):html.index(end)]
    body = section[section.index("<tbody>"):section.index("</tbody>")]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in body.split("<tr>")[1:]]


def test_degradation_map_plots_the_mean_final_errors_in_mlflow(store, tmp_path):
    """The figure's data (findings.aggregates, drawn by plot_degradation_map): per cell
    and depth, the mean over seeds of the runs' final train and test error in MLflow."""
    report = build_report(load_study_runs(FULL, store), tmp_path)
    assert "2-degradation-map" in [f.name for f in report.figures]
    finals = finals_in_mlflow(store, FULL)
    agg = report.findings.aggregates
    plotted = {(bool(r["residual"]), int(r["depth"]), r["shortcut"] if r["residual"] else None):
               r for _, r in agg.iterrows()}
    for key in ("train_error", "test_error"):
        expected = means_by_cell(finals, key)
        assert set(plotted) == set(expected)  # the diverged plain-26 is not a point
        for cell, (n, mean, ci) in expected.items():
            assert plotted[cell]["n"] == n == 2
            assert plotted[cell][f"{key}_mean"] == pytest.approx(mean, rel=1e-12), (cell, key)
            assert plotted[cell][f"{key}_ci"] == pytest.approx(ci, rel=1e-9), (cell, key)


def test_report_tables_show_the_numbers_in_mlflow(store, full_report):
    code, _, _, out_dir = full_report
    assert code == 0
    html = (out_dir / "report.html").read_text()
    finals = finals_in_mlflow(store, FULL)
    # Cells: seeds, mean ± 95% half-width of the final train and test error.
    cells = html_rows(html, "<h2>Cells (mean over seeds)</h2>", "<h2>Trials</h2>")
    train, test = means_by_cell(finals, "train_error"), means_by_cell(finals, "test_error")
    expected = sorted((str(n), f"{100 * m:.1f} ± {100 * ci:.1f}%",
                       f"{100 * test[cell][1]:.1f} ± {100 * test[cell][2]:.1f}%")
                      for cell, (n, m, ci) in train.items())
    assert sorted((row[1], row[3], row[5]) for row in cells) == expected
    # Trials: each run (the diverged one too) with its final errors, linked to its run.
    trials = html_rows(html, "<h2>Trials</h2>", "<h2>Study file</h2>")
    assert len(trials) == len(finals) == 17
    by_run = {re.search(r"/runs/(\w+)", row[0]).group(1): row for row in trials}
    for run in finals:
        row = by_run[run["run_id"]]
        assert row[1].endswith(f">{run['status']}</span>")
        assert (row[6], row[7]) == (f"{100 * run['train_error']:.1f}%",
                                    f"{100 * run['test_error']:.1f}%")


def test_minimal_degradation_map_labels_its_points_with_the_mlflow_values(store, tmp_path,
                                                                          capsys):
    """Two lines of two points: each point is labelled with its value (SVG text)."""
    code, _, err = run_report(capsys, MINIMAL, "--tracking-uri", store, "--out",
                              str(tmp_path), "--no-log")
    assert code == 0, err
    svg = (tmp_path / "figures" / "2-degradation-map.svg").read_text()
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)  # svg.fonttype none: text stays text
    labels = sorted(t for t in texts if re.fullmatch(r"\d+\.\d%", t))
    finals = finals_in_mlflow(store, MINIMAL)
    expected = sorted(f"{100 * mean:.1f}%" for key in ("train_error", "test_error")
                      for n, mean, _ in means_by_cell(finals, key).values())
    assert len(expected) == 8 and labels == expected
