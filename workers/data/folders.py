"""ImageNet-style data: an image-folder tree `ROOT/train/<class>/*` and `ROOT/val/<class>/*`.

Read with torchvision's `ImageFolder` and a `DataLoader` with worker processes (decoding
JPEGs is CPU work; these sets do not fit on the device). The standard augmentation:
training = RandomResizedCrop(image_size) + horizontal flip; evaluation = resize to
image_size * 256/224 and a center crop (single view). Normalised with the ImageNet
channel mean/std. `ROOT/val` is the test set; `data.val_size` images are held out of
`ROOT/train` for validation (see `workers.data.base`).

Shuffling and the workers' augmentation seeds come from one CPU generator whose state is
checkpointed, so a resumed trial sees the same batches as an uninterrupted one. (With 0
workers the random transforms draw from torch's global RNG instead, which `train_trial`
seeds and checkpoints too.)

On CUDA the batches come through pinned memory (`pin_memory=True`: the DataLoader's
pin-memory thread calls CUDA while the train step is being captured; the capture uses
`capture_error_mode="thread_local"` so that this does not invalidate it, see
workers/graph_step.py).
"""

from __future__ import annotations

import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from models.config import ConfigError
from workers.config import TrialConfig
from workers.data.base import EVAL_BATCH, Batch, SplitData, count_test_images, split_indices
from workers.data.files import require_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _transforms(image_size: int, augment: bool) -> tuple[transforms.Compose, transforms.Compose]:
    normalize = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    evaluate = transforms.Compose([transforms.Resize(round(image_size * 256 / 224)),
                                   transforms.CenterCrop(image_size), *normalize])
    if not augment:
        return evaluate, evaluate
    train = transforms.Compose([transforms.RandomResizedCrop(image_size),
                                transforms.RandomHorizontalFlip(), *normalize])
    return train, evaluate


class FolderData(SplitData):
    """The `workers.data.TrialData` interface over an image-folder tree."""

    def __init__(self, config: TrialConfig, device: torch.device, workers: int | None = None):
        root = require_dataset("imagenet", config.data.root)
        train_tf, eval_tf = _transforms(config.model.image_size, config.data.augment)
        train_tree = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        eval_tree = datasets.ImageFolder(str(root / "train"), transform=eval_tf)
        test_tree = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
        if test_tree.classes != train_tree.classes:
            raise ConfigError(f"data.root: {root}/val has classes {test_tree.classes[:5]}..., "
                              f"{root}/train has {train_tree.classes[:5]}...; they must match")
        classes = len(train_tree.classes)
        if config.model.num_classes < classes:
            raise ConfigError(f"model.num_classes: got {config.model.num_classes}; "
                              f"{root}/train has {classes} classes")
        if config.model.in_channels != 3:
            raise ConfigError(f"model.in_channels: got {config.model.in_channels}; "
                              "image folders are read as RGB (3 channels)")
        train_idx, val_idx = split_indices(len(train_tree), config.data.val_size,
                                           config.data.train_size)
        test_count = count_test_images(config.data.test_size, len(test_tree))
        self.sets = {"train": Subset(train_tree, train_idx.tolist()),
                     "val": Subset(eval_tree, val_idx.tolist()),
                     "test": Subset(test_tree, list(range(test_count)))}
        self.counts = {split: len(s) for split, s in self.sets.items()}
        self.num_classes = classes
        self.device = device
        self.workers = workers if workers is not None else min(8, max(0, (os.cpu_count() or 1) - 1))
        self.generator = torch.Generator().manual_seed(config.seed)

    def _loader(self, split: str, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(self.sets[split], batch_size=batch_size, shuffle=shuffle,
                          drop_last=drop_last, num_workers=self.workers,
                          generator=self.generator if shuffle else None,
                          pin_memory=self.device.type == "cuda")

    def _to_device(self, loader: DataLoader) -> Iterator[Batch]:
        for x, y in loader:
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))

    def train_batches(self, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        return self._to_device(self._loader("train", batch_size, True, drop_last))

    def eval_batches(self, split: str, batch_size: int = EVAL_BATCH) -> Iterator[Batch]:
        return self._to_device(self._loader(split, min(batch_size, 256), False, False))

    def probe_batch(self, count: int) -> Batch:
        split = self.probe_split()
        items = [self.sets[split][i] for i in range(min(count, self.counts[split]))]
        x = torch.stack([image for image, _ in items]).to(self.device)
        y = torch.tensor([label for _, label in items], device=self.device)
        return x, y
