"""Read small image data sets from disk into uint8 tensors (N, C, H, W) + int64 labels (N,).

No torchvision dataset objects: the idx and pickle formats are simple, and reading them
directly is fast (Fashion-MNIST's 60k training images load in well under a second).
"""

from __future__ import annotations

import functools
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.config import ConfigError
from workers.locate import idx_file, require_dataset


@dataclass
class ImageArrays:
    """A data set's two official splits, still on the CPU.

    train_images/test_images: uint8 (N, C, H, W); train_labels/test_labels: int64 (N,).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def read_idx(path: Path) -> np.ndarray:
    """Decode one idx file (gzipped or raw): magic 0x0000 0x08 ndim, ndim big-endian sizes, bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        blob = f.read()
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise ConfigError(f"data: {path} is not an idx file of unsigned bytes")
    ndim = blob[3]
    dims = [int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(blob, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_fashion_mnist(root: str | None = None) -> ImageArrays:
    return _read_fashion_mnist_folder(require_dataset("fashion-mnist", root))


@functools.lru_cache(maxsize=2)
def _read_fashion_mnist_folder(folder: Path) -> ImageArrays:
    """Decoded once per process (a reused Ray worker or a test session reads it again
    otherwise); callers index or copy these tensors and never write to them."""

    def images(name: str) -> torch.Tensor:  # (N, 28, 28) -> (N, 1, 28, 28)
        return torch.from_numpy(read_idx(idx_file(folder, name)).copy()).unsqueeze(1)

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(idx_file(folder, name)).astype(np.int64))

    return ImageArrays(images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
                       images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"), 10)


def _read_cifar_batches(files: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's pickles: dict with 'data' (N, 3072) uint8 rows = R, G, B planes of 32x32."""
    images, labels = [], []
    for path in files:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def read_cifar(dataset: str, root: str | None = None) -> ImageArrays:
    folder = require_dataset(dataset, root)
    if dataset == "cifar10":
        train = [folder / f"data_batch_{i}" for i in range(1, 6)]
        missing = [str(p) for p in train if not p.is_file()]
        if missing:
            raise ConfigError(f"data: {folder} is incomplete, missing {missing}")
        x, y = _read_cifar_batches(train, "labels")
        tx, ty = _read_cifar_batches([folder / "test_batch"], "labels")
        return ImageArrays(x, y, tx, ty, 10)
    x, y = _read_cifar_batches([folder / "train"], "fine_labels")
    tx, ty = _read_cifar_batches([folder / "test"], "fine_labels")
    return ImageArrays(x, y, tx, ty, 100)


def make_synthetic(channels: int, image_size: int, num_classes: int,
                   train_count: int, test_count: int, seed: int = 0) -> ImageArrays:
    """Seeded random images and labels (for benchmarks and tests; nothing to learn)."""
    gen = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, channels, image_size, image_size),
                             dtype=torch.uint8, generator=gen)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, num_classes, (n,), dtype=torch.int64, generator=gen)

    return ImageArrays(images(train_count), labels(train_count),
                       images(test_count), labels(test_count), num_classes)
