"""Data set files: where they live on disk, how to fetch a missing one, and the error
that says how to get it.

    python -m workers.data.files DATASET     (`make data`: fashion-mnist)

Locating. Search order for every data set (the first hit wins):

1. `data.root` from the trial config, when given (and only it);
2. `$RESWEEP_DATA`;
3. fashion-mnist only: `/usr/share/datasets/fashion-mnist` (Debian `dataset-fashion-mnist`);
4. `./data` (where `python -m workers.data.files` and torchvision downloads put things).

Inside each base directory both the flat layout and torchvision's layout are accepted:
fashion-mnist `BASE/*.gz`, `BASE/fashion-mnist/*.gz` or `BASE/FashionMNIST/raw/*`;
cifar10 `BASE/cifar-10-batches-py/`; cifar100 `BASE/cifar-100-python/`;
imagenet `BASE/train/` + `BASE/val/` or `BASE/imagenet/{train,val}/`.

Fetching (`fetch`, the command line). fashion-mnist, in order: already present -> done;
running as root with apt-get -> `apt-get install -y dataset-fashion-mnist` (after
`apt-get update` if the first try fails); a network -> torchvision download into ./data;
otherwise exit status 2 with a message that says exactly how to get it.
cifar10/cifar100: present -> done, else a torchvision download into ./data, else exit
status 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from models.config import ConfigError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
LOCAL_DATA = Path("data")
FETCHABLE = ("fashion-mnist", "cifar10", "cifar100")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DOWNLOAD_TIMEOUT_S = 30

# The four idx files of Fashion-MNIST (gzipped as shipped; torchvision also keeps them raw).
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

HOW_TO_GET = {
    "fashion-mnist": (
        "get it with `python -m workers.data.files fashion-mnist` (or `make data`), which runs "
        "`apt-get install -y dataset-fashion-mnist` as root (Debian: files land in "
        "/usr/share/datasets/fashion-mnist) or downloads with torchvision into ./data where "
        "a network exists; or copy the four *-ubyte.gz files into $RESWEEP_DATA"),
    "cifar10": (
        "put torchvision's `cifar-10-batches-py/` folder (data_batch_1..5, test_batch) under "
        "$RESWEEP_DATA or ./data, or run `python -m workers.data.files cifar10` where a network "
        "exists (torchvision download)"),
    "cifar100": (
        "put torchvision's `cifar-100-python/` folder (train, test) under $RESWEEP_DATA or "
        "./data, or run `python -m workers.data.files cifar100` where a network exists"),
    "imagenet": (
        "point data.root (or $RESWEEP_DATA) at an image-folder tree with train/<class>/*.JPEG "
        "and val/<class>/*.JPEG (the layout of torchvision's ImageFolder)"),
}


# ---- locating -------------------------------------------------------------------------

class DataNotFoundError(ConfigError):
    """A data set is not on disk. The message says where it was looked for and how to get it."""

    def __init__(self, dataset: str, searched: list[Path]):
        self.dataset = dataset
        self.searched = searched
        where = ", ".join(str(p) for p in searched) or "(nowhere: no candidate directory)"
        super().__init__(f"data.dataset: {dataset!r} not found; looked in: {where}; "
                         f"{HOW_TO_GET.get(dataset, '')}")


def candidate_bases(dataset: str, root: str | None = None) -> list[Path]:
    """Base directories searched for `dataset`, in order (see the module docstring)."""
    if root is not None:
        return [Path(root).expanduser()]
    bases = []
    if os.environ.get("RESWEEP_DATA"):
        bases.append(Path(os.environ["RESWEEP_DATA"]).expanduser())
    if dataset == "fashion-mnist":
        bases.append(DEBIAN_FASHION_MNIST)
    bases.append(LOCAL_DATA.resolve())
    return bases


def _fashion_mnist_dir(base: Path) -> Path | None:
    for folder in (base, base / "fashion-mnist", base / "FashionMNIST" / "raw"):
        if all(idx_file(folder, name) is not None for name in FASHION_MNIST_FILES):
            return folder
    return None


def idx_file(folder: Path, name: str) -> Path | None:
    """`folder/name.gz` or `folder/name` (torchvision keeps both), whichever exists."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _cifar_dir(base: Path, dataset: str) -> Path | None:
    if dataset == "cifar10":
        folder, needed = base / "cifar-10-batches-py", ["data_batch_1", "test_batch"]
    else:
        folder, needed = base / "cifar-100-python", ["train", "test"]
    return folder if all((folder / n).is_file() for n in needed) else None


def _imagenet_dir(base: Path) -> Path | None:
    for folder in (base, base / "imagenet"):
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return folder
    return None


def find_dataset(dataset: str, root: str | None = None) -> Path | None:
    """The directory holding `dataset`'s files, or None when it is in none of the bases."""
    for base in candidate_bases(dataset, root):
        if dataset == "fashion-mnist":
            found = _fashion_mnist_dir(base)
        elif dataset in ("cifar10", "cifar100"):
            found = _cifar_dir(base, dataset)
        elif dataset == "imagenet":
            found = _imagenet_dir(base)
        else:
            raise ConfigError(f"data.dataset: no files to look for with {dataset!r}")
        if found is not None:
            return found
    return None


def require_dataset(dataset: str, root: str | None = None) -> Path:
    """Like `find_dataset`, but a missing data set raises `DataNotFoundError`."""
    found = find_dataset(dataset, root)
    if found is None:
        raise DataNotFoundError(dataset, candidate_bases(dataset, root))
    return found


# ---- fetching -------------------------------------------------------------------------

def _say(message: str) -> None:
    print(f"workers.data.files: {message}", file=sys.stderr, flush=True)


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
        prog="python -m workers.data.files",
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
