"""Connecting to the tracking store: which URI a command uses, whether a tracking server
answers (in seconds, not after MLflow's minutes of retries), and a client on a store that
is created and upgraded before anything writes to it. run, report and ui use these.
"""

from __future__ import annotations

import os

from analysis.store import sqlite_path
from models.config import ConfigError


def answering_tracking_uri(option_value: str | None) -> str:
    """The store a command uses: --tracking-uri, else $MLFLOW_TRACKING_URI, else
    ./mlflow.db; a tracking server among them is asked first (`check_tracking_server`
    within $RESWEEP_CONNECT_TIMEOUT), naming the option or variable the URI came from.
    run, report and ui call this before they open or create anything."""
    from analysis.store import default_tracking_uri
    from orchestrator.arg_types import connect_timeout

    from_env = not option_value and os.environ.get("MLFLOW_TRACKING_URI")
    tracking_uri = option_value or default_tracking_uri()
    check_tracking_server(tracking_uri, connect_timeout(),
                          "$MLFLOW_TRACKING_URI" if from_env else "--tracking-uri")
    return tracking_uri


def check_tracking_server(tracking_uri: str, timeout_s: float,
                          option: str = "--tracking-uri") -> None:
    """Raise ConfigError, saying what to check, when an http(s) tracking URI has no server
    answering within `timeout_s` (one GET of /health; MLflow's own client would retry for
    about four minutes). Any HTTP answer passes (a 401 or a proxy's 404: MLflow's first
    request says more), and so do TLS errors (certificates are MLflow's settings)."""
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    if not tracking_uri.lower().startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):
            return
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused: nothing listens on that port"
        elif isinstance(reason, TimeoutError) or "timed out" in str(reason):
            why = f"no answer within {timeout_s:g} s"
        else:
            why = str(reason)[:200]
    where = urllib.parse.urlsplit(tracking_uri).netloc or tracking_uri
    raise ConfigError(
        f"{option}: no MLflow tracking server answers at {tracking_uri} ({why}); check "
        f"that `mlflow server` is running and listening on {where} (and, from another "
        "machine, started with --host 0.0.0.0), or use a local store (sqlite:///PATH.db); "
        f"on a slow network raise $RESWEEP_CONNECT_TIMEOUT (now {timeout_s:g} s)")


def open_client(tracking_uri: str):
    """A client on the store, created and upgraded now, before any trial writes.

    For SQLite this runs MLflow's migrations once in this process (several processes
    migrating a fresh store at once fail). A tracking server that does not answer is a
    ConfigError naming the URI: an http(s) server is asked first, within
    $RESWEEP_CONNECT_TIMEOUT (`check_tracking_server`), so the run fails in seconds, not
    after MLflow's retries; those stay as they are for everything after (a server that
    goes away mid-study is waited for)."""
    from orchestrator.arg_types import connect_timeout

    check_tracking_server(tracking_uri, connect_timeout())
    # MLflow prints a "View run ... at" line per finished run against a server; the
    # progress display and the summary already say where the runs are.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow.tracking import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.search_experiments(max_results=1)  # creates/upgrades the schema, or connects
    except Exception as err:  # noqa: BLE001 - MLflow raises many types for a bad store
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--tracking-uri: cannot open the MLflow store {tracking_uri!r}: "
                          f"{first[:300]}") from None
    return client
