"""`python -m workers.data.fetch DATASET`: make sure a data set is on disk and print where.

fashion-mnist, in order: already present (see `workers.data.locate`) -> done; running as root
with apt-get -> `apt-get install -y dataset-fashion-mnist` (after `apt-get update` if the
first try fails); a network -> torchvision download into ./data; otherwise exit status 2
with a message that says exactly how to get it. cifar10/cifar100: present -> done, else a
torchvision download into ./data, else exit status 2. `make data` calls this.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from workers.data.locate import HOW_TO_GET, LOCAL_DATA, candidate_bases, find_dataset

FETCHABLE = ("fashion-mnist", "cifar10", "cifar100")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DOWNLOAD_TIMEOUT_S = 30


def _say(message: str) -> None:
    print(f"workers.data.fetch: {message}", file=sys.stderr, flush=True)


def _apt_install() -> bool:
    """Install the Debian package; True when apt-get reported success."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        return False
    command = ["apt-get", "install", "-y", DEBIAN_PACKAGE]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _say(" ".join(command))
    if subprocess.run(command, env=env).returncode == 0:
        return True
    _say("apt-get install failed; running apt-get update and trying again")
    subprocess.run(["apt-get", "update"], env=env)
    return subprocess.run(command, env=env).returncode == 0


def download(dataset: str, root: str | None = None) -> bool:
    """Download `dataset` with torchvision into `root` (default ./data); True on success."""
    return _torchvision_download(dataset, Path(root) if root is not None else LOCAL_DATA)


def _torchvision_download(dataset: str, root: Path) -> bool:
    """Download with torchvision into `root`; False when there is no network (or it fails)."""
    import torchvision.datasets as tv  # heavy: only when we really download

    cls = {"fashion-mnist": tv.FashionMNIST, "cifar10": tv.CIFAR10, "cifar100": tv.CIFAR100}[dataset]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        _say(f"downloading {dataset} with torchvision into {root}")
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
        return True
    except Exception as err:  # no network, a proxy refusing, a checksum: all mean "not this way"
        _say(f"torchvision download failed: {type(err).__name__}: {err}")
        return False
    finally:
        socket.setdefaulttimeout(previous)


def fetch(dataset: str, root: str | None = None) -> Path | None:
    """Ensure `dataset` is on disk; return its directory, or None when every way failed."""
    found = find_dataset(dataset, root)
    if found is not None:
        return found
    if dataset == "fashion-mnist" and root is None and _apt_install():
        found = find_dataset(dataset, root)
        if found is not None:
            return found
    if download(dataset, root):
        return find_dataset(dataset, root)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.data.fetch",
        description="Make sure a data set is on disk and print the directory that holds it.")
    parser.add_argument("dataset", choices=FETCHABLE)
    parser.add_argument("--root", help="look (and download) only here instead of the defaults")
    args = parser.parse_args(argv)
    found = fetch(args.dataset, args.root)
    if found is None:
        searched = ", ".join(str(p) for p in candidate_bases(args.dataset, args.root))
        _say(f"error: {args.dataset} is not on disk (looked in: {searched}) and could not be "
             f"installed or downloaded here.\nTo get it: {HOW_TO_GET[args.dataset]}.")
        return 2
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
