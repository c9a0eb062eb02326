"""docker-compose.yml and docker/, validated without a Docker engine (none runs here).

- the file against the compose specification (check-jsonschema, as CI does);
- every command our images run, parsed by the real program's own argument parser:
  `resweep ...` by orchestrator.cli (and its study file loaded), `ray ...` and
  `mlflow server ...` by their click CLIs, `python -m X` by an import, scripts by running
  them (docker/ray-worker.sh in its dry-run mode);
- every ${VAR} of the compose file is in .env.example, which holds no real secrets;
- published ports bound to 127.0.0.1; health checks and start order;
- docker/ray-worker.sh gives each replica its own GPUs;
- docker-compose.offline.yml (`make cluster-test`) builds the same Dockerfiles with other
  build arguments, and its commands parse too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
WORKER_SCRIPT = ROOT / "docker" / "ray-worker.sh"
IMAGE_ROOT = "/app"  # docker/Dockerfile's WORKDIR: the checkout, as installed in the image
OUR_IMAGES = ("resweep:local", "resweep-mlflow:3.17.2")

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR; `$$` escapes.
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
                      r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blank lines skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def variables_used(text: str) -> set[str]:
    """Names of the variables the compose file interpolates (not `$$NAME`: container-side)."""
    return {m["braced"] or m["bare"] for m in VARIABLE.finditer(text.replace("$$", ""))}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, for the forms used in docker-compose.yml."""
    def substitute(m: re.Match) -> str:
        name = m["braced"] or m["bare"]
        value = env.get(name)
        op, arg = m["op"], m["arg"]
        if op in (":-", ":?"):
            unset = not value
        else:
            unset = value is None
        if unset and op and op.endswith("-"):
            return arg
        if unset and op and op.endswith("?"):
            raise AssertionError(f"compose would stop: {name} unset ({arg})")
        return value or ""
    parts = text.split("$$")
    return "$".join(VARIABLE.sub(substitute, part) for part in parts)


def load_compose(env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml as compose sees it after `cp .env.example .env`."""
    env = read_env_file(ENV_EXAMPLE) if env is None else env
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), env))


def argv_of(value) -> list[str]:
    if value is None:
        return []
    return list(map(str, value)) if isinstance(value, list) else shlex.split(value)


def host_path(container_path: str, service: dict) -> Path:
    """Where a path inside one of our containers comes from in this checkout."""
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        target = rest.split(":")[0]
        if source.startswith(".") and (container_path == target
                                       or container_path.startswith(target + "/")):
            return ROOT / source / os.path.relpath(container_path, target)
    if container_path.startswith(IMAGE_ROOT + "/"):
        return ROOT / os.path.relpath(container_path, IMAGE_ROOT)
    raise AssertionError(f"{container_path} is neither mounted from the checkout nor in /app")


# --- checking one command line with the real program's parser ------------------------------

def check_click(group, prog: str, argv: list[str]) -> list[str]:
    """Parse argv with a click group's subcommand; the remaining args (after `--`)."""
    import click

    command, i = group, 0
    while isinstance(command, click.Group):
        assert i < len(argv), f"`{prog} {' '.join(argv)}`: no subcommand"
        sub = command.get_command(click.Context(command), argv[i])
        assert sub is not None, f"`{prog}` has no subcommand {argv[i]!r}"
        command, i = sub, i + 1
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    command.make_context(" ".join([prog, *argv[:i]]), argv[i:])  # raises on a bad option
    return rest


def check_command(argv: list[str], service: dict, where: str) -> list[str]:
    """Assert that argv is a real command of the project or of a pinned dependency.

    Returns the programs checked (for the test to see that each kind was exercised).
    """
    assert argv, f"{where}: empty command"
    prog, args = argv[0], argv[1:]
    if prog == "resweep":
        from orchestrator.cli import COMMANDS, build_parser

        assert args and args[0] in COMMANDS, f"{where}: `resweep {args[:1]}` not in {COMMANDS}"
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            raise AssertionError(f"{where}: resweep rejects `{' '.join(argv)}`") from None
        if args[0] in ("run", "plan"):
            from search_spaces import load_study

            study = Path(service.get("working_dir", IMAGE_ROOT), parsed.study)
            load_study(host_path(str(study), service))  # raises on an invalid study
        return [f"resweep {args[0]}"]
    if prog == "ray":
        from ray.scripts.scripts import cli as ray_cli

        rest = check_click(ray_cli, "ray", args)
        inner = check_command(rest, service, f"{where} (job entrypoint)") if rest else []
        return [f"ray {args[0]}", *inner]
    if prog == "mlflow":
        from mlflow.cli import cli as mlflow_cli

        check_click(mlflow_cli, "mlflow", args)
        return [f"mlflow {args[0]}"]
    if prog in ("python", "python3") and args[:1] == ["-m"]:
        import importlib.util

        assert importlib.util.find_spec(args[1]), f"{where}: no module {args[1]}"
        return [f"python -m {args[1]}"]
    if prog in ("python", "python3") and args[:1] == ["-c"]:
        compile(args[1], where, "exec")
        return ["python -c"]
    if prog in ("sh", "bash"):
        script = host_path(args[0], service)
        assert script.is_file(), f"{where}: {args[0]} -> {script} missing"
        return [f"script {script.relative_to(ROOT)}"]
    raise AssertionError(f"{where}: {prog!r} is no entry point of the project or its pins")


def healthcheck_commands(service: dict) -> list[list[str]]:
    test = service.get("healthcheck", {}).get("test")
    if not test:
        return []
    kind, rest = test[0], test[1:]
    if kind == "CMD":
        return [rest]
    assert kind == "CMD-SHELL"
    return [shlex.split(part) for part in rest[0].split("&&")]


# --- tests ---------------------------------------------------------------------------------

def test_compose_file_validates_against_the_compose_spec():
    tool = Path(sys.executable).with_name("check-jsonschema")
    tool = str(tool) if tool.exists() else shutil.which("check-jsonschema")
    assert tool, "check-jsonschema is pinned in requirements.txt"
    proc = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_variable_is_in_env_example_and_it_holds_no_secrets():
    used = variables_used(COMPOSE_FILE.read_text())
    example = read_env_file(ENV_EXAMPLE)
    assert used - set(example) == set(), "add these to .env.example"
    assert set(example) - used == set(), ".env.example lists variables compose never uses"
    for key, value in example.items():
        if any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")):
            assert value.startswith("change-me"), f".env.example: {key} must be a placeholder"
    assert ".env" in (ROOT / ".gitignore").read_text().split(), ".env must stay untracked"
    # Required secrets really are required: compose refuses to start without them.
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "RAY_AUTH_TOKEN"):
        with pytest.raises(AssertionError, match=secret):
            load_compose({k: v for k, v in example.items() if k != secret})


def test_every_service_command_is_a_real_entry_point():
    compose = load_compose()
    checked = []
    for name, service in compose["services"].items():
        if service.get("image") not in OUR_IMAGES:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), \
                f"{name}: pin the image tag"
            continue
        argv = argv_of(service.get("entrypoint")) + argv_of(service.get("command"))
        checked += check_command(argv, service, f"service {name}")
        for probe in healthcheck_commands(service):
            checked += check_command(probe, service, f"service {name} healthcheck")
    assert {"resweep run", "ray start", "ray job", "mlflow server",
            "script docker/ray-worker.sh"} <= set(checked)


def test_worker_script_starts_a_real_ray_worker_command(tmp_path):
    """The `ray start` line the worker script builds parses with Ray's own CLI."""
    from ray.scripts.scripts import cli as ray_cli

    worker = load_compose()["services"]["ray-worker"]
    env = {**os.environ, **{k: str(v) for k, v in worker["environment"].items()},
           "GPU_CLAIMS_DIR": str(tmp_path), "GPU_COUNT": "2", "DRY_RUN": "1",
           "RAY_WORKER_CPUS": "4"}
    out = subprocess.run(["sh", str(WORKER_SCRIPT)], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "CUDA_VISIBLE_DEVICES=0"
    assert out[1] == "ray"
    check_click(ray_cli, "ray", out[2:])
    assert "--address=ray-head:6379" in out and "--num-gpus=1" in out


def test_ports_are_published_on_localhost_only_and_services_start_in_order():
    services = load_compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is reachable from outside"
        for dep, spec in service.get("depends_on", {}).items():
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s health check"
            else:
                assert condition in ("service_completed_successfully", "service_started")
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"}}
    assert services["resweep"]["profiles"] == ["submit"]
    for name in ("ray-head", "ray-worker", "resweep"):
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token"
        assert services[name]["environment"]["RAY_AUTH_TOKEN"] == "change-me-ray-auth-token"
    gpus = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_images_pin_the_versions_of_requirements_txt():
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split()
                if "==" in line)
    cluster = (ROOT / "docker" / "requirements-cluster.txt").read_text()
    assert "-r ../requirements.txt" in cluster
    assert f"ray[default,client,tune]=={pins['ray[tune]']}" in cluster
    mlflow_image = (ROOT / "docker" / "mlflow.Dockerfile").read_text()
    for package in ("mlflow", "psycopg2-binary"):
        assert f"{package}=={pins[package]}" in mlflow_image
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".env" in ignored  # GBs, and the secrets


def _claim(claims: Path, name: str, gpus: int = 4, per_worker: int = 1, wait_s: int = 3):
    env = dict(os.environ, GPU_CLAIMS_DIR=str(claims), GPU_COUNT=str(gpus), DRY_RUN="1",
               WORKER_NAME=name, RAY_WORKER_GPUS=str(per_worker), CLAIM_WAIT_S=str(wait_s))
    proc = subprocess.run(["sh", str(WORKER_SCRIPT)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr
    return proc.stdout.split()[0].removeprefix("CUDA_VISIBLE_DEVICES="), proc.stderr


def test_worker_replicas_claim_distinct_gpus(tmp_path):
    # Four replicas start at once on a 4-GPU host: each gets its own GPU.
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda n: _claim(tmp_path, n)[0], ["w0", "w1", "w2", "w3"]))
    assert sorted(got) == ["0", "1", "2", "3"]
    # A fifth finds none free and says why, instead of sharing a GPU.
    devices, err = _claim(tmp_path, "w4", wait_s=1)
    assert devices is None and "no 1 free GPU(s) of 4" in err
    # A restarted container (same hostname) gets its own GPU back.
    assert _claim(tmp_path, "w2")[0] == got[2]
    # A replica that is gone stops heartbeating; its GPU is free after CLAIM_STALE_S.
    stale = tmp_path / f"gpu-{got[1]}"
    old = time.time() - 120
    os.utime(stale, (old, old))
    assert _claim(tmp_path, "w5")[0] == got[1]
    # Two GPUs per replica; a CPU-only replica.
    assert _claim(tmp_path / "two", "a", per_worker=2)[0] == "0,1"
    assert _claim(tmp_path / "two", "b", per_worker=2)[0] == "2,3"
    assert _claim(tmp_path / "cpu", "c", per_worker=0)[0] == ""


# --- docker-compose.offline.yml: the override `make cluster-test` runs the stack with --------

OFFLINE_FILE = ROOT / "docker-compose.offline.yml"


class _ComposeTagLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (!reset, !override): read as their plain values."""


for _tag in ("!reset", "!override"):
    _ComposeTagLoader.add_constructor(
        _tag, lambda loader, node: (loader.construct_mapping(node) if isinstance(
            node, yaml.MappingNode) else loader.construct_sequence(node) if isinstance(
            node, yaml.SequenceNode) else loader.construct_scalar(node)))


def dockerfile_args(path: Path) -> dict[str, str]:
    """ARG NAME[=default] lines of a Dockerfile: {name: default}."""
    args = {}
    for line in path.read_text().splitlines():
        if line.startswith("ARG "):
            name, _, default = line[4:].strip().partition("=")
            args[name] = default.strip('"')
    return args


def test_offline_override_builds_the_same_dockerfiles_with_other_arguments():
    base = load_compose()["services"]
    env = read_env_file(ENV_EXAMPLE)
    override = yaml.load(interpolate(OFFLINE_FILE.read_text(), env), _ComposeTagLoader)
    assert set(override["services"]) <= set(base), "the override adds no service"
    for name in ("minio", "minio-init"):  # not buildable here: behind a profile
        assert override["services"][name] == {"profiles": ["minio"]}
    for name, service in override["services"].items():
        build = service.get("build")
        if build:
            dockerfile = ROOT / build["dockerfile"]
            declared = dockerfile_args(dockerfile)
            assert set(build.get("args", {})) <= set(declared), f"{name}: undeclared build arg"
        if name in ("mlflow", "ray-head", "ray-worker", "resweep"):
            assert base[name]["build"]["dockerfile"] == build["dockerfile"], name
    for dockerfile in ("Dockerfile", "mlflow.Dockerfile"):  # networked users: official base
        declared = dockerfile_args(ROOT / "docker" / dockerfile)
        assert declared == {"BASE_IMAGE": "python:3.11-slim-bookworm", "PIP_OPTIONS": ""}
    # The commands the override puts in place parse with the real programs' parsers.
    checked = []
    for name in ("mlflow", "ray-head", "resweep"):
        service = {**base[name], **override["services"][name]}
        argv = argv_of(service.get("entrypoint")) + argv_of(service.get("command"))
        checked += check_command(argv, service, f"offline {name}")
        for probe in healthcheck_commands(service):
            checked += check_command(probe, service, f"offline {name} healthcheck")
    assert {"mlflow server", "ray start", "ray job", "resweep run"} <= set(checked)


def test_worker_script_passes_extra_start_args(tmp_path):
    env = dict(os.environ, GPU_CLAIMS_DIR=str(tmp_path), RAY_WORKER_GPUS="0", DRY_RUN="1",
               RAY_WORKER_START_ARGS="--node-ip-address=127.0.0.2 --dashboard-agent-listen-port=0")
    out = subprocess.run(["sh", str(WORKER_SCRIPT)], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    from ray.scripts.scripts import cli as ray_cli

    check_click(ray_cli, "ray", out[2:])
    assert {"--node-ip-address=127.0.0.2", "--dashboard-agent-listen-port=0",
            "--num-gpus=0"} <= set(out)
