"""What every data set of a trial offers the engine: batches, split sizes, RNG state.

`TrialData` is the interface `workers.trial` trains on; `DeviceData` (workers.data.arrays)
and `FolderData` (workers.data.folders) implement it and share `SplitData`'s bookkeeping.

Splits. The validation set is `data.val_size` images held out of the official training
split by a fixed permutation (seed 0, the same for every trial, so all trials of a study
see the same split); `data.train_size` then takes the first N of the remaining images in
file order; the official test split stays separate (`data.test_size` takes its first N).
"""

from __future__ import annotations

from typing import Iterator, Protocol

import torch

from models.config import ConfigError

SPLIT_SEED = 0                 # the train/validation permutation: fixed, not the trial seed
EVAL_BATCH = 1024              # images per evaluation batch

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


def count_test_images(test_size: int | None, total: int) -> int:
    """Images of a `total`-image test split that `data.test_size` takes (None: all)."""
    if test_size is not None and not 0 < test_size <= total:
        raise ConfigError(f"data.test_size: got {test_size}; allowed 1..{total}")
    return total if test_size is None else test_size


class SplitData:
    """The bookkeeping `DeviceData` and `FolderData` share. Subclasses set `counts` and
    `generator`: the one generator behind shuffling (and augmentation), checkpointed."""

    counts: dict[str, int]
    generator: torch.Generator

    def steps_per_epoch(self, batch_size: int, drop_last: bool) -> int:
        n = self.counts["train"]
        return n // batch_size if drop_last else -(-n // batch_size)

    def probe_split(self) -> str:
        """Where probe images come from: held-out validation images, else the test set."""
        return "val" if self.counts["val"] else "test"

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
