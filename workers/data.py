"""A trial's data: train / validation / test splits, batched, normalised, augmented.

`load_data(config, device)` returns an object with the `TrialData` interface below.
Small data sets (fashion-mnist, cifar10/100, synthetic) become a `DeviceData`: the images
stay on the device as uint8 tensors (N, C, H, W) and every batch is indexed, normalised
and augmented there (`workers.augment`), with no DataLoader. `imagenet` is an image-folder
tree read by a DataLoader with worker processes (`workers.imagefolder`).

Splits. The validation set is `data.val_size` images held out of the official training
split by a fixed permutation (seed 0, the same for every trial, so all trials of a study
see the same split); `data.train_size` then takes the first N of the remaining images in
file order; the official test split stays separate (`data.test_size` takes its first N).
Normalisation uses the per-channel mean and std of the training images actually used.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import torch

from models.config import ConfigError
from workers.augment import Normalize, channel_stats, random_crop_flip
from workers.config import DATASETS, TrialConfig
from workers.locate import DataNotFoundError
from workers.readers import ImageArrays, make_synthetic, read_cifar, read_fashion_mnist
from workers.validate import model_data_problems

SPLIT_SEED = 0                 # the train/validation permutation: fixed, not the trial seed
SYNTHETIC_TRAIN_DEFAULT = 10_000
SYNTHETIC_TEST_DEFAULT = 1_000
EVAL_BATCH = 1024

Batch = tuple[torch.Tensor, torch.Tensor]   # float (B, C, H, W) on the device, int64 (B,)


class TrialData(Protocol):
    """What the engine needs from a data set."""

    counts: dict[str, int]          # images per split: "train", "val", "test"

    def steps_per_epoch(self, batch_size: int, drop_last: bool) -> int: ...

    def train_batches(self, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        """One epoch of shuffled, augmented, normalised batches."""

    def eval_batches(self, split: str, batch_size: int = EVAL_BATCH) -> Iterator[Batch]:
        """The split in file order, normalised, not augmented."""

    def probe_batch(self, count: int) -> Batch:
        """A fixed batch of held-out images (val, else test) for the model probes."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def split_indices(total: int, val_size: int, train_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) into a training split of `total` images; both sorted."""
    if not 0 <= val_size < total:
        raise ConfigError(f"data.val_size: got {val_size}; allowed 0 <= val_size < {total} "
                          f"(the training split has {total} images)")
    available = total - val_size
    if train_size is not None and not 0 < train_size <= available:
        raise ConfigError(f"data.train_size: got {train_size}; allowed 1..{available} "
                          f"({total} training images minus val_size {val_size})")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(SPLIT_SEED))
    val = order[:val_size].sort().values
    train = order[val_size:].sort().values
    if train_size is not None:
        train = train[:train_size]
    return train, val


class DeviceData:
    """Splits held on `device` as uint8; batches are built there (see module docstring)."""

    def __init__(self, arrays: ImageArrays, val_size: int, train_size: int | None,
                 test_size: int | None, augment: bool, seed: int, device: torch.device):
        train_idx, val_idx = split_indices(arrays.train_images.shape[0], val_size, train_size)
        test_count = arrays.test_images.shape[0]
        if test_size is not None and not 0 < test_size <= test_count:
            raise ConfigError(f"data.test_size: got {test_size}; allowed 1..{test_count}")
        test_count = test_size or test_count
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

    def steps_per_epoch(self, batch_size: int, drop_last: bool) -> int:
        n = self.counts["train"]
        return n // batch_size if drop_last else -(-n // batch_size)

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
        split = "val" if self.counts["val"] else "test"
        return (self.normalize(self.images[split][:count]), self.labels[split][:count])

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


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
        from workers.fetch import download  # torchvision only when needed
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
        model = config.model
        train = (data.train_size or SYNTHETIC_TRAIN_DEFAULT) + data.val_size
        return make_synthetic(model.in_channels, model.image_size, model.num_classes,
                              train, data.test_size or SYNTHETIC_TEST_DEFAULT)
    raise ConfigError(f"data.dataset: got {data.dataset!r}; allowed: {list(DATASETS)}")


def load_data(config: TrialConfig, device: torch.device, workers: int | None = None) -> TrialData:
    """The trial's data on `device` (see the module docstring). Missing files raise
    `workers.locate.DataNotFoundError` (a ConfigError) naming where it looked."""
    if config.data.dataset == "imagenet":
        from workers.imagefolder import FolderData  # torchvision only when needed
        return FolderData(config, device, workers)
    arrays = read_arrays(config)
    _, channels, height, _ = arrays.train_images.shape
    _check_matches_model(config, channels, height, arrays.num_classes)
    return DeviceData(arrays, config.data.val_size, config.data.train_size,
                      config.data.test_size, config.data.augment, config.seed, device)
