"""`resweep report` and `resweep ui` against a tracking server that is not there: exit
status 2 within seconds (not after MLflow's ~4 minutes of retries), one line naming the
option, the address and what to check, and nothing written. Real closed ports, as in
tests/orchestrator/test_unreachable_services.py for `resweep run`."""

from __future__ import annotations

import socket

import pytest

LIMIT_S = 30  # issue 14: exit 2 within 30 s


def assert_refused(done, seconds, tmp_path, command, *expected):
    assert done.returncode == 2, done.stdout + done.stderr
    assert seconds < LIMIT_S
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"resweep {command}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert list(tmp_path.iterdir()) == []  # no report, no store, no server log


@pytest.mark.parametrize("command", ["report", "ui"])
def test_tracking_server_not_listening(tmp_path, command, free_port, resweep_timed):
    uri = f"http://127.0.0.1:{free_port()}"
    done, seconds = resweep_timed(tmp_path, command, "degradation-quick", "--tracking-uri", uri)
    assert_refused(done, seconds, tmp_path, command, "--tracking-uri", uri,
                   "connection refused", "mlflow server", "RESWEEP_CONNECT_TIMEOUT")


def test_report_with_the_server_from_the_environment_not_listening(tmp_path, free_port, resweep_timed):
    uri = f"http://127.0.0.1:{free_port()}"
    done, seconds = resweep_timed(tmp_path, "report", "degradation-quick",
                            env={"MLFLOW_TRACKING_URI": uri})
    assert_refused(done, seconds, tmp_path, "report", "$MLFLOW_TRACKING_URI", uri)


def test_ui_with_a_server_that_never_answers_times_out(tmp_path, resweep_timed):
    """A port that accepts connections but never answers: the configurable time-out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accepted: the GET waits for an answer
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        done, seconds = resweep_timed(tmp_path, "ui", "--tracking-uri", uri,
                                env={"RESWEEP_CONNECT_TIMEOUT": "1"})
    assert_refused(done, seconds, tmp_path, "ui", "--tracking-uri", "no answer within 1 s",
                   "(now 1 s)")
