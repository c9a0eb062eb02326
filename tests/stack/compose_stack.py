"""`make cluster-test`: docker-compose.yml really up, offline, and a study run through it.

    python tests/stack/compose_stack.py [--keep]

Builds everything here (tests/stack/compose_build.py), brings the stack up with
docker-compose.offline.yml over docker-compose.yml (host networking on 127.0.0.1, MLflow's
proxied artifact store instead of MinIO, CPU-only workers), waits for every healthcheck,
then checks from the host:

1. the Ray dashboard and the MLflow UI answer on 127.0.0.1; the dashboard refuses
   requests without the Ray token (token authentication) and answers with it;
2. the compose file's own `resweep` service submits a small study (4 ResNet-8 trials);
   one Ray worker container is killed while trials run on it and started again: the study
   completes, every trial FINISHED exactly once in MLflow, every epoch logged once, the
   runs stored in the stack's PostgreSQL; `resweep report` attaches the report to the
   parent run (through MLflow's artifact proxy);
3. `docker compose down` (volumes kept) and `up` again: the runs are all still there,
   and a rerun of the submit finds every trial done.

Prints build times, image sizes, healthchecks, the outcome and the wall time; stops what
it started (the stack, with its volumes unless --keep; dockerd if it started it). Images
are kept, so a rerun builds from the cache in seconds. Exits 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compose_build as cb  # noqa: E402  (tests/stack has no package)

PROJECT = "resweep-cluster-test"
STUDY = "cluster-test"
TRIALS = 4     # residual x repeats of the study below
EPOCHS = 8
PORTS = {"STACK_PG_PORT": 25432, "STACK_MLFLOW_PORT": 25000, "STACK_GCS_PORT": 26379,
         "STACK_DASHBOARD_PORT": 28265, "STACK_CLIENT_PORT": 30001}
WORKERS = 2    # one CPU each: the machine's two cores
STUDY_YAML = f"""\
name: {STUDY}
description: make cluster-test, through docker compose (4 short ResNet-8 trials)
data: {{dataset: fashion-mnist, train_size: 4096, val_size: 256, test_size: 256,
        augment: false}}
train: {{recipe: cosine, epochs: {EPOCHS}, lr: 0.1, batch_size: 128, threads: 1}}
model: {{family: cifar, block: basic, shortcut: A, width: 0.25}}
design: grid
space: {{residual: [false, true], depth: [8]}}
repeats: 2
resources: {{cpu: 1, gpu: 0}}
"""


class CheckFailed(AssertionError):
    pass


def check(condition, message: str) -> None:
    if not condition:
        raise CheckFailed(message)
    cb.log(f"ok: {message}")


class Stack:
    """docker compose -p resweep-cluster-test -f docker-compose.yml -f the override."""

    def __init__(self) -> None:
        self.env_file = cb.WORK / "stack.env"
        self.token = secrets.token_hex(24)
        studies, data = cb.WORK / "studies", cb.WORK / "data"
        studies.mkdir(parents=True, exist_ok=True)
        data.mkdir(exist_ok=True)
        (studies / f"{STUDY}.yaml").write_text(STUDY_YAML)
        values = {"POSTGRES_USER": "mlflow", "POSTGRES_PASSWORD": secrets.token_hex(16),
                  "POSTGRES_DB": "mlflow", "MINIO_ROOT_USER": "unused",
                  "MINIO_ROOT_PASSWORD": "unused-here", "RAY_AUTH_TOKEN": self.token,
                  "RAY_WORKER_CPUS": "1", "RAY_SHM_SIZE": "1gb",
                  "RESWEEP_STUDIES_DIR": str(studies), "RESWEEP_STUDY": f"{STUDY}.yaml",
                  "RESWEEP_DATA_DIR": str(data), **{k: str(v) for k, v in PORTS.items()}}
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        self.base = ["compose", "-p", PROJECT, "--env-file", str(self.env_file),
                     "-f", str(cb.ROOT / "docker-compose.yml"),
                     "-f", str(cb.ROOT / "docker-compose.offline.yml")]
        self.mlflow_url = f"http://127.0.0.1:{PORTS['STACK_MLFLOW_PORT']}"
        self.dashboard_url = f"http://127.0.0.1:{PORTS['STACK_DASHBOARD_PORT']}"

    def __call__(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return cb.docker(*self.base, *args, **kwargs)

    def config(self) -> dict:
        return cb.compose_config_json(self.base)

    def up(self) -> dict[str, float]:
        """`up -d` with WORKERS workers; seconds until each service is healthy."""
        started = time.monotonic()
        self("up", "-d", "--no-build", "--scale", f"ray-worker={WORKERS}", timeout=900)
        healthy: dict[str, float] = {}
        deadline = time.monotonic() + 600
        while True:
            states = self.states()
            for name, state in states.items():
                if state["Health"] == "healthy" and name not in healthy:
                    healthy[name] = round(time.monotonic() - started, 1)
                    cb.log(f"healthy: {name} ({healthy[name]} s)")
            if len(healthy) == len(states) == 2 + WORKERS + 1:
                return healthy
            if time.monotonic() > deadline:
                raise CheckFailed(f"not healthy after 600 s: {states}\n"
                                  + self("logs", "--tail", "30", check=False).stdout[-6000:])
            time.sleep(2)

    def states(self) -> dict[str, dict]:
        """{container name: {Service, State, Health}} of the running stack."""
        out = self("ps", "--format", "json").stdout.strip()
        rows = json.loads(out) if out.startswith("[") else [json.loads(l) for l in
                                                            out.splitlines() if l]
        return {row["Name"]: row for row in rows}

    def submit(self, background: bool = False):
        """The compose file's own one-shot submitter: `run --rm resweep`."""
        cmd = ["docker", *self.base, "--profile", "submit", "run", "--rm", "-T", "resweep"]
        if background:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=dict(os.environ, **cb.docker_env()))
        return self("--profile", "submit", "run", "--rm", "-T", "resweep", timeout=1200)


def http_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def check_endpoints(stack: Stack) -> None:
    check(http_status(f"{stack.mlflow_url}/") == 200, f"MLflow UI answers on {stack.mlflow_url}")
    api = f"{stack.dashboard_url}/api/version"
    check(http_status(api) == 401, "Ray dashboard refuses a request without the token (401)")
    check(http_status(api, {"Authorization": "Bearer wrong"}) == 403,
          "Ray dashboard refuses a wrong token (403)")
    check(http_status(api, {"Authorization": f"Bearer {stack.token}"}) == 200,
          f"Ray dashboard answers with the token on {stack.dashboard_url}")


def trial_runs(client) -> list:
    experiment = client.get_experiment_by_name(STUDY)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("resweep.kind") == "trial"]


def kill_a_busy_worker(stack: Stack, client, submit) -> str:
    """Wait until two trials are mid-way (an epoch logged, not the last), kill a worker."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if submit.poll() is not None:
            raise CheckFailed(f"the submit ended before any trial ran:\n{submit.stdout.read()}")
        busy = [r for r in trial_runs(client) if r.info.status == "RUNNING"
                and 1 <= int(r.data.tags.get("resweep.last_epoch", "0")) < EPOCHS - 2]
        if len(busy) >= WORKERS:
            worker = sorted(n for n, s in stack.states().items()
                            if s["Service"] == "ray-worker")[0]
            cb.docker("kill", worker)
            cb.log(f"killed {worker} while {len(busy)} trials were mid-way "
                   f"({', '.join(r.info.run_name for r in busy)})")
            time.sleep(5)
            cb.docker("start", worker)
            cb.log(f"started {worker} again")
            return worker
        time.sleep(0.5)
    raise CheckFailed("no two trials ran at once within 600 s")


def check_study(stack: Stack, client) -> dict:
    """Every trial FINISHED once, every epoch once, the parent FINISHED; a snapshot."""
    runs = trial_runs(client)
    ids = sorted(r.data.tags["resweep.trial_id"] for r in runs)
    check(len(runs) == TRIALS and len(set(ids)) == TRIALS,
          f"{TRIALS} trial runs in MLflow, one per trial_id")
    check(all(r.info.status == "FINISHED" and r.data.tags["resweep.status"] == "finished"
              for r in runs), "every trial run FINISHED")
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_error")]
        check(sorted(steps) == list(range(1, EPOCHS + 1)),
              f"{run.info.run_name}: val_error logged once for each of {EPOCHS} epochs "
              f"(worker failures: {run.data.tags.get('resweep.worker_failures', '0')})")
    experiment = client.get_experiment_by_name(STUDY)
    parents = [r for r in client.search_runs([experiment.experiment_id])
               if r.data.tags.get("resweep.kind") == "study"]
    check(parents and parents[0].info.status == "FINISHED", "the parent run FINISHED")
    rows = stack("exec", "-T", "postgres", "psql", "-U", "mlflow", "-d", "mlflow", "-At",
                 "-c", "select status, count(*) from runs group by status").stdout.split()
    check(f"FINISHED|{TRIALS + 1}" in rows,
          f"PostgreSQL's runs table holds the {TRIALS} trials and the parent, FINISHED ({rows})")
    return {r.info.run_id: (r.info.status, r.data.tags["resweep.trial_id"],
                            sorted(r.data.metrics.items())) for r in runs}


def check_report(stack: Stack, client) -> None:
    out = cb.WORK / "report"
    proc = cb.sh(sys.executable, "-m", "orchestrator.cli", "report", STUDY, "--tracking-uri",
                 stack.mlflow_url, "--out", str(out), "-q", cwd=cb.ROOT, timeout=600)
    cb.log(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "report written")
    experiment = client.get_experiment_by_name(STUDY)
    parent = [r for r in client.search_runs([experiment.experiment_id], order_by=[
        "attributes.start_time DESC"]) if r.data.tags.get("resweep.kind") == "study"][0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    check("report/report.html" in names,
          f"the report is attached to the parent run ({len(names)} files under report/)")
    local = client.download_artifacts(parent.info.run_id, "report/report.html",
                                      str(cb.WORK))
    check(STUDY in Path(local).read_text(), "report.html reads back through MLflow's proxy")


def run_study(stack: Stack, client) -> dict:
    """Submit, kill a worker mid-study, wait for the submit; check MLflow; the outcome
    (with `runs`, the snapshot down_and_up compares against)."""
    submit = stack.submit(background=True)
    try:
        killed = kill_a_busy_worker(stack, client, submit)
        output, _ = submit.communicate(timeout=1200)
    finally:
        if submit.poll() is None:
            submit.kill()
    (cb.WORK / "submit.log").write_text(output)
    cb.log("submit output (tail):\n    " + "\n    ".join(output.strip().splitlines()[-8:]))
    check(submit.returncode == 0, f"the submit service exited 0 (see {cb.WORK / 'submit.log'})")
    snap = check_study(stack, client)
    runs = trial_runs(client)
    failures = sum(int(r.data.tags.get("resweep.worker_failures", "0")) for r in runs)
    cb.log(f"worker kill: {killed}; trials restarted from a checkpoint: {failures}")
    return {"submit": "exit 0", "killed_worker": killed, "trials_restarted": failures,
            "trials": {r.info.run_name: {
                "status": r.info.status, "epochs": int(r.data.tags["resweep.last_epoch"]),
                "val_error": round(r.data.metrics["val_error"], 4),
                "worker_failures": int(r.data.tags.get("resweep.worker_failures", "0"))}
                for r in sorted(runs, key=lambda r: r.info.run_name)},
            "runs": snap}


def down_and_up(stack: Stack, client, before: dict) -> dict:
    stack("down", timeout=600)
    check(not stack.states(), "`docker compose down`: no container left (volumes kept)")
    healthy = stack.up()
    cb.log(f"up again, healthy after {max(healthy.values())} s")
    check(check_study(stack, client) == before, "after down/up: the same runs, same metrics")
    rerun = stack.submit().stdout
    check(f"all {TRIALS} trials are already done" in rerun,
          "a rerun of the submit finds every trial done")
    check(len(trial_runs(client)) == TRIALS, "and adds no trial run")
    return {"runs_unchanged": True, "healthy_again_after_s": max(healthy.values()),
            "rerun": next(l.strip() for l in rerun.splitlines() if "already done" in l)}


LOCK_WAIT_S = [0.0]  # seconds spent waiting for --lock (not counted as the test's time)


@contextlib.contextmanager
def held(lock: Path | None):
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        cb.log(f"waiting for {lock}")
        waited = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        LOCK_WAIT_S[0] += time.monotonic() - waited
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the stack's volumes (runs, artifacts) after the test")
    parser.add_argument("--lock", metavar="FILE", type=Path,
                        help="hold this lock file (flock) while the stack runs, not while "
                             "images build: for machines whose CPUs are shared")
    args = parser.parse_args(argv)
    started = time.monotonic()
    why_not = cb.docker_usable()
    if why_not:
        print(f"make cluster-test: cannot run here: {why_not}", file=sys.stderr)
        return 2
    cb.WORK.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    with cb.dockerd() as started_dockerd:
        summary["dockerd"] = "started here" if started_dockerd else "already running"
        summary["compose"] = cb.ensure_compose()
        stack = Stack()
        try:
            summary["builds"] = cb.build_all(stack.config)
            with held(args.lock):
                try:
                    summary["healthy_after_s"] = stack.up()
                    check_endpoints(stack)
                    from mlflow.tracking import MlflowClient
                    client = MlflowClient(stack.mlflow_url)
                    summary["study"] = run_study(stack, client)
                    check_report(stack, client)
                    summary["down_up"] = down_and_up(stack, client,
                                                     summary["study"]["runs"])
                    summary["outcome"] = "every check passed"
                finally:
                    if "outcome" not in summary:
                        logs = stack("logs", "--tail", "40", check=False)
                        (cb.WORK / "stack-failure.log").write_text(logs.stdout + logs.stderr)
                    stack("--profile", "submit", "down", *([] if args.keep else ["-v"]),
                          check=False, timeout=600)
        except (CheckFailed, cb.BuildError) as failure:
            summary["outcome"] = f"FAILED: {failure}"
    summary["wall_s"] = round(time.monotonic() - started - LOCK_WAIT_S[0], 1)
    if args.lock:
        summary["lock_wait_s"] = round(LOCK_WAIT_S[0], 1)  # not in wall_s
    summary.get("study", {}).pop("runs", None)  # the snapshot: too long to print
    print("make cluster-test summary:\n" + json.dumps(summary, indent=2))
    return 0 if summary["outcome"] == "every check passed" else 1


if __name__ == "__main__":
    sys.exit(main())
