"""Small data sets held in memory: read from disk, kept on the device, batched there.

fashion-mnist, cifar10/100 and synthetic become a `DeviceData`: the images stay on the
device as uint8 tensors (N, C, H, W) and every batch is indexed, normalised and augmented
there, with no DataLoader. Normalisation uses the per-channel mean and std of the training
images actually used (see `workers.data.base` for how the splits are taken).

Reading. No torchvision dataset objects: the idx and pickle formats are simple, and
reading them directly is fast (Fashion-MNIST's 60k training images load in well under a
second). With `data.download`, a missing fashion-mnist/cifar set is first downloaded with
torchvision (`workers.data.files`, network needed).

Augmentation, the paper's CIFAR recipe (Sec. 4.2): pad 4 pixels on each side, take a
random crop of the original size, flip horizontally with probability 1/2. Every image of
a batch gets its own crop offset and flip, drawn from a seeded `torch.Generator`, and the
crop and flip are one gather, so a batch costs a handful of kernel launches on a GPU.
"""

from __future__ import annotations

import functools
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from models.config import ConfigError
from workers.config import DATASETS, TrialConfig, model_data_problems
from workers.data.base import EVAL_BATCH, Batch, SplitData, count_test_images, split_indices
from workers.data.datasets import split_sizes
from workers.data.files import DataNotFoundError, idx_file, require_dataset


# -- reading ------------------------------------------------------------------------------

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


# -- normalisation and augmentation, batched on the device -------------------------------

def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in pixel units (0..255).

    Accumulated in float64 over chunks so a large split needs no float copy of itself.
    Returns two float32 tensors of shape (C,) on the images' device.
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        total_sq += (part * part).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-6).sqrt()
    return mean.float(), std.float()


class Normalize:
    """uint8 (B, C, H, W) -> float32 (x - mean) / std, per channel."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = mean.view(1, -1, 1, 1)           # (1, C, 1, 1), pixel units
        self.inv_std = (1.0 / std).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) * self.inv_std


def random_crop_flip(images: torch.Tensor, generator: torch.Generator,
                     padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Pad with zeros (the channel mean, once normalised), crop each image at its own random
    offset back to (H, W), and mirror a random half of the batch.

    images: (B, C, H, W) on the generator's device; returns a new tensor of the same shape.
    Same generator state -> same crops and flips.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))   # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
    rows = dy + torch.arange(height, device=device)                # (B, H)
    cols = torch.arange(width, device=device).expand(batch, width)  # (B, W)
    if flip:
        mirrored = torch.rand(batch, 1, generator=generator, device=device) < 0.5
        cols = torch.where(mirrored, width - 1 - cols, cols)
    cols = dx + cols
    batch_index = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    channel_index = torch.arange(channels, device=device).view(1, channels, 1, 1)
    return padded[batch_index, channel_index, rows.view(batch, 1, height, 1),
                  cols.view(batch, 1, 1, width)]


# -- the TrialData of an in-memory data set -----------------------------------------------

class DeviceData(SplitData):
    """Splits held on `device` as uint8; batches are built there (see module docstring)."""

    def __init__(self, arrays: ImageArrays, val_size: int, train_size: int | None,
                 test_size: int | None, augment: bool, seed: int, device: torch.device):
        train_idx, val_idx = split_indices(arrays.train_images.shape[0], val_size, train_size)
        test_count = count_test_images(test_size, arrays.test_images.shape[0])
        self.device = device
        self.images = {"train": arrays.train_images[train_idx].to(device),
                       "val": arrays.train_images[val_idx].to(device),
                       "test": arrays.test_images[:test_count].to(device)}
        self.labels = {"train": arrays.train_labels[train_idx].to(device),
                       "val": arrays.train_labels[val_idx].to(device),
                       "test": arrays.test_labels[:test_count].to(device)}
        self.counts = {split: int(x.shape[0]) for split, x in self.images.items()}
        self.num_classes = arrays.num_classes
        self.normalize = Normalize(*channel_stats(self.images["train"]))
        self.augment = augment
        # One generator for shuffling and augmentation; its state is checkpointed.
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images["train"].shape[1:])

    def train_batches(self, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        images, labels = self.images["train"], self.labels["train"]
        order = torch.randperm(images.shape[0], generator=self.generator, device=self.device)
        for step in range(self.steps_per_epoch(batch_size, drop_last)):
            index = order[step * batch_size:(step + 1) * batch_size]
            x = self.normalize(images[index])
            if self.augment:
                x = random_crop_flip(x, self.generator)
            yield x, labels[index]

    def eval_batches(self, split: str, batch_size: int = EVAL_BATCH) -> Iterator[Batch]:
        images, labels = self.images[split], self.labels[split]
        for start in range(0, images.shape[0], batch_size):
            yield (self.normalize(images[start:start + batch_size]),
                   labels[start:start + batch_size])

    def probe_batch(self, count: int) -> Batch:
        split = self.probe_split()
        return (self.normalize(self.images[split][:count]), self.labels[split][:count])


def load_arrays(config: TrialConfig, device: torch.device) -> DeviceData:
    """The trial's in-memory data set on `device`, checked against its model."""
    arrays = read_arrays(config)
    _, channels, height, _ = arrays.train_images.shape
    _check_matches_model(config, channels, height, arrays.num_classes)
    return DeviceData(arrays, config.data.val_size, config.data.train_size,
                      config.data.test_size, config.data.augment, config.seed, device)


def _check_matches_model(config: TrialConfig, channels: int, size: int, classes: int) -> None:
    """The network's input and output must fit the data; say which field to change."""
    problems = model_data_problems(config.model, config.data.dataset, channels, size, classes)
    if problems:
        raise ConfigError("\n".join(problems))


def read_arrays(config: TrialConfig) -> ImageArrays:
    """The official splits of a small data set, on the CPU. With `data.download`, a
    missing fashion-mnist/cifar set is first downloaded with torchvision (network needed)."""
    try:
        return _read_arrays(config)
    except DataNotFoundError:
        if not config.data.download:
            raise
        from workers.data.files import download  # torchvision only when needed
        if not download(config.data.dataset, config.data.root):
            raise
        return _read_arrays(config)


def _read_arrays(config: TrialConfig) -> ImageArrays:
    data = config.data
    if data.dataset == "fashion-mnist":
        return read_fashion_mnist(data.root)
    if data.dataset in ("cifar10", "cifar100"):
        return read_cifar(data.dataset, data.root)
    if data.dataset == "synthetic":
        model, sizes = config.model, split_sizes(data)
        return make_synthetic(model.in_channels, model.image_size, model.num_classes,
                              sizes.train + sizes.val, sizes.test)
    raise ConfigError(f"data.dataset: got {data.dataset!r}; allowed: {list(DATASETS)}")
