"""`resweep run` against services that are not there: exit status 2 within seconds (not
after MLflow's ~4 minutes of retries or Ray's GCS retries), naming the option, the
address tried and what to check; nothing is started or written. Real closed ports: a
socket bound to a free port and closed again. Only the start is checked this way: a
tracking server that goes away mid-study is still waited for
(tests/stack/test_cluster_stack.py::test_studies_survive_tracking_server_crashes)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "search_spaces" / "degradation-quick.yaml"
LIMIT_S = 30  # issue 14: exit 2 within 30 s


def assert_refused(done, seconds, tmp_path, *expected):
    assert done.returncode == 2, done.stderr
    assert seconds < LIMIT_S
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_tracking_server_not_listening(tmp_path, free_port, resweep_timed):
    uri = f"http://127.0.0.1:{free_port()}"
    done, seconds = resweep_timed(tmp_path, "run", str(STUDY), "--tracking-uri", uri)
    assert_refused(done, seconds, tmp_path, "--tracking-uri", uri, "connection refused",
                   "mlflow server", "RESWEEP_CONNECT_TIMEOUT")


def test_tracking_server_from_the_environment_not_listening(tmp_path, free_port, resweep_timed):
    uri = f"http://127.0.0.1:{free_port()}"
    done, seconds = resweep_timed(tmp_path, "run", str(STUDY), "--dry-run",
                            env={"MLFLOW_TRACKING_URI": uri})
    assert_refused(done, seconds, tmp_path, "$MLFLOW_TRACKING_URI", uri)


def test_tracking_server_that_never_answers_times_out(tmp_path, resweep_timed):
    """A port that accepts connections but never answers: the configurable time-out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accepted: the GET waits for an answer
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        done, seconds = resweep_timed(tmp_path, "run", str(STUDY), "--tracking-uri", uri,
                                env={"RESWEEP_CONNECT_TIMEOUT": "1"})
    assert_refused(done, seconds, tmp_path, "--tracking-uri", "no answer within 1 s",
                   "(now 1 s)")


def test_ray_address_not_listening(tmp_path, free_port, resweep_timed):
    address = f"127.0.0.1:{free_port()}"
    done, seconds = resweep_timed(tmp_path, "run", str(STUDY), "--address", address)
    assert_refused(done, seconds, tmp_path, "--address", address, "connection refused",
                   "ray start --head", "RAY_AUTH_MODE=token", "RESWEEP_CONNECT_TIMEOUT")


def test_ray_address_from_the_environment_not_listening(tmp_path, free_port, resweep_timed):
    address = f"127.0.0.1:{free_port()}"
    done, seconds = resweep_timed(tmp_path, "run", str(STUDY), "--tracking-uri",
                            f"sqlite:///{tmp_path}/store/mlflow.db",
                            env={"RAY_ADDRESS": address})
    assert_refused(done, seconds, tmp_path, "$RAY_ADDRESS", address)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "99999"])
def test_connect_timeout_must_be_a_sensible_number(tmp_path, value, resweep_timed):
    done, seconds = resweep_timed(tmp_path, "run", str(STUDY), "--address", "127.0.0.1:1",
                            env={"RESWEEP_CONNECT_TIMEOUT": value})
    assert_refused(done, seconds, tmp_path, "$RESWEEP_CONNECT_TIMEOUT", repr(value),
                   "> 0 and <= 3600")


def test_a_cluster_that_rejects_the_token_says_so(monkeypatch):
    """Ray's exception says only "Failed to connect"; its C++ client logs InvalidAuthToken
    while it retries (measured against a token head: ~25 s, exit 2). The hint reads it."""
    from orchestrator.ray_session import _connect_hint

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    log = ("gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: "
           "RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n")
    hint = _connect_hint("127.0.0.1:6379", ConnectionError("Failed to connect to Ray "
                                                           "cluster at 127.0.0.1:6379"), log)
    assert "rejected this driver's authentication" in hint
    assert "RAY_AUTH_MODE=token" in hint and "RAY_AUTH_TOKEN" in hint
    assert "\n" not in hint
    other = _connect_hint("127.0.0.1:6379", ConnectionError("Failed to connect"), "")
    assert "rejected" not in other
