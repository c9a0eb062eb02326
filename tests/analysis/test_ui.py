"""`resweep ui`: the runs-view address, input errors, and (slow) a real `mlflow server`
on 127.0.0.1 serving the study store."""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from analysis.report import run_url, runs_view_url, ui_base_url
from orchestrator.cli import main as resweep

STUDY = "ui-test"


def test_runs_view_and_run_addresses():
    base = ui_base_url("sqlite:////tmp/x/mlflow.db")
    assert base == "http://127.0.0.1:5000"
    assert runs_view_url(base, "3") == \
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    # A run's page in the training-runs view too, not MLflow 3's GenAI default.
    assert run_url("http://mlflow:5000", "3", "abc") == \
        "http://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_base_url("http://tracking.example:8080/") == "http://tracking.example:8080"
    # --ui-url (e.g. `resweep ui --port 5001`'s address) wins over both.
    assert ui_base_url("sqlite:////tmp/x/mlflow.db", "http://127.0.0.1:5001/") == \
        "http://127.0.0.1:5001"
    assert ui_base_url("http://tracking.example:8080", "http://ui:9") == "http://ui:9"


@pytest.fixture(scope="module")
def store(analysis_store):
    """The session store (its STUDY: plain + residual at depths 8/14, one seed)."""
    return analysis_store.uri


def test_port_in_use_and_unknown_study_exit_2(store, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert resweep(["ui", "--tracking-uri", store, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} is in use" in err and "Traceback" not in err
    assert resweep(["ui", "nope", "--tracking-uri", store]) == 2
    assert f"no experiment named 'nope'" in capsys.readouterr().err


def test_ui_takes_the_study_as_report_does_a_name_or_a_file(store, tmp_path, capsys):
    quick = open("search_spaces/degradation-quick.yaml", encoding="utf-8").read()
    for name in (STUDY, "nope"):
        (tmp_path / f"{name}.yaml").write_text(
            quick.replace("name: degradation-quick", f"name: {name}"), encoding="utf-8")
    assert resweep(["ui", str(tmp_path / "nope.yaml"), "--tracking-uri", store]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err   # the file's name
    with socket.socket() as busy:           # the study resolves; then the port is checked
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert resweep(["ui", str(tmp_path / f"{STUDY}.yaml"), "--tracking-uri", store,
                        "--port", port]) == 2
    assert "is in use" in capsys.readouterr().err


def test_report_quiet_prints_only_the_count_and_the_paths(store, tmp_path, capsys):
    out_dir = tmp_path / "report"
    assert resweep(["report", STUDY, "--tracking-uri", store, "--out", str(out_dir),
                    "--no-log", "-q"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"resweep report: study '{STUDY}': 4 trials")
    assert f"report:  {out_dir / 'report.html'}" in printed and "MLflow:  http" in printed
    assert f"(after `resweep ui {STUDY} --tracking-uri {store}`)" in printed
    assert "Paper claims" not in printed and "degradation onset" not in printed
    assert (out_dir / "report.html").is_file()


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)


@pytest.mark.slow
def test_ui_serves_the_store_on_localhost(store, capsys, free_port):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ui = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--tracking-uri",
                           store, "--port", str(port), STUDY],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(ui.stdout, lines), daemon=True).start()
    try:
        printed, deadline = [], time.monotonic() + 150
        while not any(l.startswith(f"{STUDY}: http") for l in printed):
            assert time.monotonic() < deadline and ui.poll() is None, "".join(printed)
            try:
                printed.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(
                f"{base}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name={STUDY}",
                timeout=10) as response:
            experiment_id = json.load(response)["experiment"]["experiment_id"]
        expected = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        assert f"{STUDY}: {expected}\n" in printed
        with urllib.request.urlopen(base + "/", timeout=10) as response:
            assert response.status == 200 and "<html" in response.read().decode().lower()
        # Against a running server (http URI) the command only prints the address.
        capsys.readouterr()
        assert resweep(["ui", STUDY, "--tracking-uri", base]) == 0
        assert capsys.readouterr().out == f"{STUDY}: {expected}\n"
    finally:
        ui.send_signal(signal.SIGINT)
        code = ui.wait(60)
    assert code == 0
    with socket.socket() as sock:   # the server's process group is gone with it
        assert sock.connect_ex(("127.0.0.1", port)) != 0
