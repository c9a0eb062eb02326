"""The offline build of the compose stack: dockerd, Compose v2, a Debian base, a wheelhouse
and every image, on a machine that reaches Debian's and Python's package indexes but no
image registry (`make cluster-test`; tests/stack/compose_stack.py runs the stack).

- dockerd: used if it answers; else started (installed with apt if missing) with
  `--bridge=none --iptables=false --ip6tables=false`, so the machine's networking is left
  as it is: builds and containers use host networking. Stopped at the end if started here.
- Compose v2: `docker compose` if the CLI has it; else Debian's `docker-compose` package
  (2.26, trixie; bookworm only has Compose v1), unpacked as a CLI plugin under
  build/cluster/docker-config (DOCKER_CONFIG), nothing installed on the machine.
- The base: `debootstrap --variant=minbase bookworm` imported as resweep-offline/debian;
  docker/offline/python.Dockerfile makes the Python 3.11 base the project's Dockerfiles
  take as BASE_IMAGE (the official python image where a registry is reachable).
- The wheelhouse: `pip download` of docker/requirements-cluster.txt and of the MLflow
  image's packages into build/cluster/wheelhouse, served on 127.0.0.1 while the images
  build (PIP_OPTIONS="--no-index --find-links http://127.0.0.1:PORT/"). torch comes as
  the package index has it: the CUDA build (its nvidia-* wheels, ~3 GB), which also runs
  on CPUs, so the images are the ones a GPU machine runs.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "cluster"
DOCKER_CONFIG = WORK / "docker-config"
WHEELHOUSE = WORK / "wheelhouse"
DEBIAN_IMAGE = "resweep-offline/debian:bookworm"
PYTHON_IMAGE = "resweep-offline/python:3.11-bookworm"
# Debian's Compose v2 package, from the release after bookworm (a static-enough Go binary).
COMPOSE_SUITE = "trixie"
# A fixed port for the wheelhouse: PIP_OPTIONS is a build argument, and a new value would
# invalidate the cached pip layer of every image (a free port instead when it is taken).
WHEELHOUSE_PORT = 28999


class BuildError(RuntimeError):
    """A step of the build failed; the message says which and shows its output."""


def debian_mirror() -> str:
    """The Debian archive this machine's apt already uses ($RESWEEP_DEBIAN_MIRROR wins):
    the first `URIs:` of /etc/apt/sources.list.d/*.sources, or the first `deb URL` line of
    /etc/apt/sources.list, whose path ends in /debian (not -security)."""
    if os.environ.get("RESWEEP_DEBIAN_MIRROR"):
        return os.environ["RESWEEP_DEBIAN_MIRROR"]
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text(errors="replace").splitlines():
            if line.strip().startswith("URIs:"):
                candidates += line.split(":", 1)[1].split()
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text(errors="replace").splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 2 and words[0] == "deb":
                candidates.append(words[1])
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    raise BuildError("no Debian archive found in /etc/apt/sources.list(.d); set "
                     "RESWEEP_DEBIAN_MIRROR to the archive's URL (the one apt uses)")


def sh(*cmd: str, check: bool = True, capture: bool = True, timeout: float = 1800,
       env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run a command (no shell); BuildError with its output tail when it fails."""
    proc = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), **kwargs)
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or ""))[-4000:] if capture else ""
        raise BuildError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}\n{out}")
    return proc


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def docker_env() -> dict[str, str]:
    """The environment every docker command of the test runs with."""
    return {"DOCKER_CONFIG": str(DOCKER_CONFIG), "DOCKER_BUILDKIT": "0"}


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return sh("docker", *args, env=docker_env(), **kwargs)


def docker_usable() -> str | None:
    """None when this machine can run the test, else why not (for a skip)."""
    if shutil.which("docker") and sh("docker", "info", check=False).returncode == 0:
        return None
    if os.geteuid() != 0:
        return "no Docker engine answers and starting one needs root"
    if not (shutil.which("dockerd") or shutil.which("apt-get")):
        return "no Docker engine, no dockerd and no apt-get to install one"
    return None


def apt_install(*packages: str) -> None:
    log(f"apt-get install {' '.join(packages)}")
    sh("apt-get", "update", "-qq", timeout=600)
    sh("apt-get", "install", "-y", "-q", "--no-install-recommends", *packages, timeout=1200,
       env={"DEBIAN_FRONTEND": "noninteractive"})


@contextmanager
def dockerd() -> Iterator[bool]:
    """A Docker engine for the duration; yields whether it was started here."""
    if shutil.which("docker") and sh("docker", "info", check=False).returncode == 0:
        yield False
        return
    if not shutil.which("dockerd"):
        apt_install("docker.io")
    WORK.mkdir(parents=True, exist_ok=True)
    log_file = open(WORK / "dockerd.log", "a")
    proc = subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false",
                             "--ip6tables=false"], stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while sh("docker", "info", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BuildError(f"dockerd did not start; see {WORK / 'dockerd.log'}")
            time.sleep(0.5)
        log("dockerd started (--bridge=none --iptables=false: host networking only)")
        yield True
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        log("dockerd stopped")


def ensure_compose() -> str:
    """`docker compose` v2 (>= 2.24: the override uses !reset/!override); its version."""
    found = docker("compose", "version", "--short", check=False)
    if found.returncode == 0 and _version(found.stdout) >= (2, 24):
        return found.stdout.strip()
    log(f"no Compose v2 here: Debian {COMPOSE_SUITE}'s docker-compose as a CLI plugin")
    with tempfile.TemporaryDirectory(prefix="resweep-apt-") as tmp:
        lists = Path(tmp, "lists")
        (lists / "partial").mkdir(parents=True)
        sources = Path(tmp, "sources.list")
        sources.write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                           f"{debian_mirror()} {COMPOSE_SUITE} main\n")
        opts = [f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/dev/null",
                f"-oDir::State::Lists={lists}", "-oDir::Cache::pkgcache=",
                "-oDir::Cache::srcpkgcache=", "-oAPT::Sandbox::User=root"]
        sh("apt-get", *opts, "update", "-qq", timeout=600)
        sh("apt-get", *opts, "download", "docker-compose", cwd=tmp, timeout=600)
        deb = next(Path(tmp).glob("docker-compose_*.deb"))
        sh("dpkg-deb", "-x", str(deb), str(Path(tmp, "x")))
        plugin = DOCKER_CONFIG / "cli-plugins" / "docker-compose"
        plugin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(tmp, "x/usr/libexec/docker/cli-plugins/docker-compose"), plugin)
    return docker("compose", "version", "--short").stdout.strip()


def _version(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)", text)
    return tuple(int(g) for g in match.groups()) if match else (0,)


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def image_size_gb(tag: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e9


def debian_base() -> float:
    """resweep-offline/debian:bookworm from debootstrap (kept: later runs reuse it)."""
    if image_exists(DEBIAN_IMAGE):
        return 0.0
    started = time.monotonic()
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    rootfs = WORK / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    log("debootstrap --variant=minbase bookworm")
    sh("debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror(),
       timeout=1200)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):  # apt's downloads
        for path in (rootfs / junk).glob("*"):
            if path.is_file():
                path.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    sh("docker", "import", "-", DEBIAN_IMAGE, stdin=tar.stdout, env=docker_env())
    tar.wait()
    shutil.rmtree(rootfs)
    return time.monotonic() - started


def mlflow_image_packages() -> list[str]:
    """The pins docker/mlflow.Dockerfile installs (its `pip install` line)."""
    text = (ROOT / "docker" / "mlflow.Dockerfile").read_text()
    line = next(l for l in text.splitlines() if "pip install" in l)
    return [word for word in line.split() if "==" in word]


def wheelhouse() -> float:
    """`pip download` every package of the images (skipped while the pins are unchanged)."""
    requirements = [ROOT / "requirements.txt", ROOT / "docker" / "requirements-cluster.txt"]
    extra = mlflow_image_packages() + ["pip", "setuptools", "wheel"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in requirements)
                         + " ".join(extra).encode()).hexdigest()[:16]
    stamp = WHEELHOUSE / f".complete-{key}"
    if stamp.exists():
        return 0.0
    started = time.monotonic()
    log("pip download -> build/cluster/wheelhouse (torch's CUDA wheels: ~3 GB)")
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    sh("python3", "-m", "pip", "download", "-q", "-d", str(WHEELHOUSE),
       "-r", str(requirements[1]), *extra, timeout=3600)
    stamp.touch()
    return time.monotonic() - started


@contextmanager
def serve_wheelhouse() -> Iterator[str]:
    """The wheelhouse over HTTP on 127.0.0.1 (builds run on host networking); pip options."""
    handler = functools.partial(_QuietHandler, directory=str(WHEELHOUSE))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEELHOUSE_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"--no-index --find-links http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def build(tag: str, dockerfile: str, args: dict[str, str]) -> float:
    """`docker build` on host networking; seconds taken. The classic builder: BuildKit
    would fetch a Dockerfile frontend or need the buildx plugin, neither offline here."""
    started = time.monotonic()
    cmd = ["build", "--force-rm", "--network", "host", "-t", tag, "-f", dockerfile]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    log_path = WORK / f"build-{tag.replace('/', '_').replace(':', '_')}.log"
    with open(log_path, "w") as out:
        proc = subprocess.run(["docker", *cmd, str(ROOT)], stdout=out, stderr=subprocess.STDOUT,
                              env=dict(os.environ, **docker_env()), timeout=3600)
    if proc.returncode != 0:
        raise BuildError(f"docker build {tag} failed:\n{log_path.read_text()[-4000:]}")
    return time.monotonic() - started


def stack_images(config: dict) -> list[tuple[str, str, dict]]:
    """(tag, dockerfile, build args) of every image the compose config builds, once each."""
    seen = {}
    for service in config["services"].values():
        if "build" in service:
            seen.setdefault(service["image"], (service["build"]["dockerfile"],
                                               service["build"].get("args") or {}))
    return [(tag, dockerfile, args) for tag, (dockerfile, args) in seen.items()]


def build_all(compose_config) -> dict[str, dict]:
    """Base, wheelhouse and every image of the stack; {what: {seconds, size_gb}}."""
    times = {"debian base (debootstrap)": {"seconds": debian_base()},
             "wheelhouse (pip download)": {"seconds": wheelhouse()}}
    with serve_wheelhouse() as pip_options:
        os.environ["OFFLINE_PIP_OPTIONS"] = pip_options  # the override's build args
        log(f"building {PYTHON_IMAGE}")
        times[PYTHON_IMAGE] = {"seconds": build(PYTHON_IMAGE, "docker/offline/python.Dockerfile",
                                                {"DEBIAN_IMAGE": DEBIAN_IMAGE})}
        for tag, dockerfile, args in stack_images(compose_config()):
            log(f"building {tag} ({dockerfile})")
            times[tag] = {"seconds": build(tag, dockerfile, args)}
    for tag, entry in times.items():
        if ":" in tag:
            entry["size_gb"] = round(image_size_gb(tag), 2)
        entry["seconds"] = round(entry["seconds"], 1)
    return times


def compose_config_json(compose: list[str]) -> dict:
    return json.loads(docker(*compose, "config", "--format", "json").stdout)
