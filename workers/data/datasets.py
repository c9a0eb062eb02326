"""What is known about each data set before it is read: image shape, classes, split sizes.

The one table of dataset facts (stdlib only, no torch), read by the planner
(`search_spaces.expand` fills a model's input shape and classes from it, `search_spaces.
cost` its epoch length), by `workers.memory` (the bytes a trial keeps on the GPU) and by
the loaders in this package (the synthetic set's default sizes).

`split_sizes(data)` turns a trial's `DataConfig` into the number of images of each split
it uses: `data.val_size` held out of the official training split, `data.train_size` of
the rest (None: all of it), `data.test_size` of the official test split (None: all). A
size larger than the split is capped here; the loader refuses it (`workers.data.
split_indices`), so a plan never counts images a trial cannot get.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.config import DataConfig


@dataclass(frozen=True)
class DatasetFacts:
    """One data set's images: (channels, image_size, image_size), `classes` labels, and
    the official train/test split sizes (images)."""

    channels: int
    image_size: int          # pixels, height = width (imagenet: the standard crop)
    classes: int
    train: int               # the official training split (validation is held out of it)
    test: int                # the official test split (imagenet: its 50k val images)
    on_device: bool = True   # held on the device as uint8 arrays; False: streamed from folders


DATASET_FACTS: dict[str, DatasetFacts] = {
    "fashion-mnist": DatasetFacts(channels=1, image_size=28, classes=10,
                                  train=60_000, test=10_000),
    "cifar10": DatasetFacts(channels=3, image_size=32, classes=10, train=50_000, test=10_000),
    "cifar100": DatasetFacts(channels=3, image_size=32, classes=100, train=50_000, test=10_000),
    "imagenet": DatasetFacts(channels=3, image_size=224, classes=1000, train=1_281_167,
                             test=50_000, on_device=False),
}

# "synthetic": seeded random images shaped like the model's input (benchmarks, tests).
# Its training split is train_size (default below) + val_size images; its test split
# test_size (default below).
SYNTHETIC_TRAIN_DEFAULT = 10_000
SYNTHETIC_TEST_DEFAULT = 1_000


@dataclass(frozen=True)
class SplitSizes:
    """Images a trial uses per split."""

    train: int
    val: int
    test: int


def split_sizes(data: DataConfig) -> SplitSizes:
    """Images per split for `data` (see the module docstring); KeyError for a data set
    that is neither in DATASET_FACTS nor "synthetic"."""
    if data.dataset == "synthetic":
        return SplitSizes(train=data.train_size or SYNTHETIC_TRAIN_DEFAULT, val=data.val_size,
                          test=data.test_size or SYNTHETIC_TEST_DEFAULT)
    facts = DATASET_FACTS[data.dataset]
    pool = max(0, facts.train - data.val_size)
    train = min(data.train_size, pool) if data.train_size else pool
    test = min(data.test_size, facts.test) if data.test_size else facts.test
    return SplitSizes(train=train, val=min(data.val_size, facts.train), test=test)
