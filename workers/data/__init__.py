"""A trial's data: train / validation / test splits, batched, normalised, augmented.

    load_data(config, device, workers=None) -> TrialData

Modules, low to high (none imports one below it in this list):

    datasets  the dataset facts: shapes, classes, split sizes (stdlib only, for the planner)
    files     where data sets live on disk, DataNotFoundError (how to get a missing one),
              and `python -m workers.data.files DATASET` (`make data`): install or download
    base      the TrialData interface, Batch, split_indices (the validation hold-out)
    arrays    fashion-mnist, cifar10/100, synthetic: read into memory, batched and
              augmented on the device (DeviceData)
    folders   imagenet-style image-folder trees read by a DataLoader (FolderData)

Importing this package (or `workers.data.datasets`) imports no torch: the exports below
are resolved lazily (PEP 562), so `search_spaces` plans a study without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from workers.config import TrialConfig
    from workers.data.base import TrialData

_EXPORTS = {
    "Batch": "workers.data.base", "EVAL_BATCH": "workers.data.base",
    "TrialData": "workers.data.base", "split_indices": "workers.data.base",
    "DeviceData": "workers.data.arrays", "FolderData": "workers.data.folders",
    "DataNotFoundError": "workers.data.files", "find_dataset": "workers.data.files",
    "DATASET_FACTS": "workers.data.datasets", "split_sizes": "workers.data.datasets",
}

__all__ = sorted([*_EXPORTS, "load_data"])


def load_data(config: TrialConfig, device: torch.device, workers: int | None = None) -> TrialData:
    """The trial's data on `device`: an image-folder tree (imagenet) read by a DataLoader
    with `workers` processes, else an in-memory data set held on the device. Missing files
    raise `DataNotFoundError` (a ConfigError) naming where it looked."""
    if config.data.dataset == "imagenet":
        from workers.data.folders import FolderData  # torchvision only when needed
        return FolderData(config, device, workers)
    from workers.data.arrays import load_arrays
    return load_arrays(config, device)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workers.data' has no attribute {name!r}")
