"""workers data: the real Fashion-MNIST files, torchvision-format CIFAR and image-folder
fixtures written here, splits, device augmentation, and the missing-data error."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.config import ConfigError, ModelConfig
from workers.config import DataConfig, TrialConfig
from workers.data import load_data, split_indices
from workers.data.arrays import Normalize, channel_stats, random_crop_flip, read_fashion_mnist
from workers.data.datasets import DATASET_FACTS, split_sizes
from workers.data.files import DataNotFoundError, find_dataset

FMNIST_MODEL = ModelConfig(depth=8, width=0.5, in_channels=1, image_size=28)
CIFAR_MODEL = ModelConfig(depth=8, width=0.5, in_channels=3, image_size=32)
CPU = torch.device("cpu")


def trial(data: DataConfig, model: ModelConfig = FMNIST_MODEL, seed: int = 0) -> TrialConfig:
    return TrialConfig(name="t", model=model, data=data, seed=seed)


# -- splits ----------------------------------------------------------------------------

def test_split_indices_are_disjoint_sorted_and_sized():
    train, val = split_indices(1000, 100, None)
    assert len(train) == 900 and len(val) == 100
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())
    train_small, val_again = split_indices(1000, 100, 250)
    assert torch.equal(val_again, val)                      # fixed split, any train_size
    assert torch.equal(train_small, train[:250])            # first N of the remainder
    assert split_indices(1000, 0, None)[1].numel() == 0


@pytest.mark.parametrize("val_size,train_size,key", [(1000, None, "data.val_size"),
                                                     (-1, None, "data.val_size"),
                                                     (100, 901, "data.train_size")])
def test_split_indices_reject_impossible_sizes(val_size, train_size, key):
    with pytest.raises(ConfigError, match=key):
        split_indices(1000, val_size, train_size)


def test_fashion_mnist_real_files_split_sizes():
    data = load_data(trial(DataConfig(val_size=5000, train_size=12_000, test_size=3000)), CPU)
    assert data.counts == {"train": 12_000, "val": 5000, "test": 3000}
    assert data.images["train"].dtype == torch.uint8
    assert tuple(data.images["train"].shape) == (12_000, 1, 28, 28)
    full = load_data(trial(DataConfig(val_size=5000)), CPU)
    assert full.counts == {"train": 55_000, "val": 5000, "test": 10_000}
    assert set(full.labels["train"].tolist()) == set(range(10))
    # the same validation images whatever the training subset
    assert torch.equal(full.images["val"], data.images["val"])


def test_batches_are_normalised_and_sized():
    data = load_data(trial(DataConfig(train_size=1000, val_size=200, test_size=300)), CPU)
    batches = list(data.train_batches(128, drop_last=False))
    assert [b[0].shape[0] for b in batches] == [128] * 7 + [104]
    assert len(list(data.train_batches(128, drop_last=True))) == 7 == data.steps_per_epoch(128, True)
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28) and y.dtype == torch.int64
    evaluated = torch.cat([x for x, _ in data.eval_batches("test", 128)])
    assert evaluated.shape[0] == 300
    assert abs(float(torch.cat([x for x, _ in data.eval_batches("train")]).mean())) < 1e-3


# -- device augmentation ---------------------------------------------------------------

def test_channel_stats_match_torch():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=7)
    as_float = images.double()
    assert torch.allclose(mean.double(), as_float.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(std.double(), as_float.std(dim=(0, 2, 3), unbiased=False), atol=1e-3)
    normal = Normalize(mean, std)(images)
    assert torch.allclose(normal.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


def test_augmentation_shapes_and_determinism():
    images = torch.randn(64, 3, 32, 32)
    first = random_crop_flip(images, torch.Generator().manual_seed(7))
    again = random_crop_flip(images, torch.Generator().manual_seed(7))
    other = random_crop_flip(images, torch.Generator().manual_seed(8))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_each_augmented_image_is_a_crop_of_the_padded_image_maybe_mirrored():
    images = torch.randn(16, 2, 10, 12)
    out = random_crop_flip(images, torch.Generator().manual_seed(3), padding=4)
    padded = F.pad(images, (4, 4, 4, 4))
    offsets, flips = set(), 0
    for i in range(16):
        hits = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(
                    padded[i, :, dy:dy + 10, dx:dx + 12]))]
        assert hits, f"image {i} is not a (mirrored) crop"
        offsets.add(hits[0][:2])
        flips += hits[0][2]
    assert len(offsets) > 4 and 0 < flips < 16   # per-image offsets and flips


def test_training_batches_repeat_with_the_same_seed():
    config = DataConfig(train_size=512, val_size=100, test_size=100)
    a = load_data(trial(config, seed=5), CPU)
    b = load_data(trial(config, seed=5), CPU)
    c = load_data(trial(config, seed=6), CPU)
    xa, ya = next(a.train_batches(64, False))
    xb, yb = next(b.train_batches(64, False))
    xc, _ = next(c.train_batches(64, False))
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)


# -- CIFAR in torchvision's on-disk format ----------------------------------------------

def _write_cifar(root, dataset: str, per_batch: int = 20) -> np.ndarray:
    """Write format-correct pickles; image k has R plane = k, G = 255 - k, B = 7."""
    rng = np.random.default_rng(0)

    def batch(start: int, count: int, label_key: str, classes: int) -> dict:
        data = np.zeros((count, 3, 32, 32), dtype=np.uint8)
        for k in range(count):
            data[k, 0], data[k, 1], data[k, 2] = (start + k) % 256, 255 - (start + k) % 256, 7
        return {"batch_label": b"fixture", "data": data.reshape(count, 3072),
                label_key: rng.integers(0, classes, count).tolist(),
                "filenames": [f"img{start + k}.png" for k in range(count)]}

    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(5):
            with open(folder / f"data_batch_{i + 1}", "wb") as f:
                pickle.dump(batch(i * per_batch, per_batch, "labels", 10), f)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump(batch(1000, per_batch, "labels", 10), f)
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for name, start, count in (("train", 0, 5 * per_batch), ("test", 1000, per_batch)):
            entry = batch(start, count, "fine_labels", 100)
            entry["coarse_labels"] = [0] * count
            with open(folder / name, "wb") as f:
                pickle.dump(entry, f)


@pytest.mark.parametrize("dataset,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_loader_reads_torchvision_format(tmp_path, dataset, classes):
    _write_cifar(tmp_path, dataset)
    model = CIFAR_MODEL.replace(num_classes=classes)
    config = DataConfig(dataset=dataset, root=str(tmp_path), val_size=10)
    data = load_data(trial(config, model), CPU)
    assert data.counts == {"train": 90, "val": 10, "test": 20}
    assert data.num_classes == classes
    images = torch.cat([data.images["train"], data.images["val"]])
    reds = sorted(images[:, 0, 0, 0].tolist())
    assert reds == list(range(100))                          # every training image, once
    k = int(data.images["train"][3, 0, 5, 5])
    assert data.images["train"][3, 1, 31, 0] == 255 - k and data.images["train"][3, 2, 0, 31] == 7
    x, y = next(data.train_batches(32, False))
    assert x.shape == (32, 3, 32, 32) and int(y.max()) < classes


def test_data_and_model_must_fit(tmp_path):
    _write_cifar(tmp_path, "cifar10")
    with pytest.raises(ConfigError) as err:
        load_data(trial(DataConfig(dataset="cifar10", root=str(tmp_path), val_size=10)), CPU)
    assert "model.in_channels: got 1" in str(err.value)
    assert "model.image_size: got 28" in str(err.value)


# -- image folders (ImageNet layout) -----------------------------------------------------

def test_image_folder_loader_reads_a_generated_tree(tmp_path, image_tree):
    image_tree({"train": 4, "val": 2})
    model = ModelConfig(depth=8, width=0.25, in_channels=3, image_size=32, num_classes=3)
    config = TrialConfig(name="t", model=model, seed=1,
                         data=DataConfig(dataset="imagenet", root=str(tmp_path), val_size=3))
    data = load_data(config, CPU, workers=0)
    assert data.counts == {"train": 9, "val": 3, "test": 6}
    torch.manual_seed(0)   # with 0 workers the transforms draw from torch's global RNG
    batches = list(data.train_batches(4, drop_last=False))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 32, 32)] * 2 + [(1, 3, 32, 32)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(
        data.sets["train"].dataset.targets[i] for i in data.sets["train"].indices)
    test_x, test_y = zip(*data.eval_batches("test"))
    assert torch.cat(test_y).tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.cat(test_x).shape == (6, 3, 32, 32)
    x, _ = data.probe_batch(256)
    assert x.shape == (3, 3, 32, 32)
    # the same generator (and global RNG) state gives the same shuffled, augmented batches
    again = load_data(config, CPU, workers=0)
    torch.manual_seed(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again.train_batches(4, False), batches))


# -- missing data ------------------------------------------------------------------------

def test_missing_data_names_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RESWEEP_DATA", str(tmp_path / "nothing-here"))
    with pytest.raises(DataNotFoundError) as err:
        load_data(trial(DataConfig(dataset="cifar10"), CIFAR_MODEL), CPU)
    message = str(err.value)
    assert "data.dataset: 'cifar10' not found" in message
    assert str(tmp_path / "nothing-here") in message and "cifar-10-batches-py" in message
    assert isinstance(err.value, ConfigError)
    with pytest.raises(DataNotFoundError) as err:
        load_data(trial(DataConfig(root=str(tmp_path))), CPU)
    assert str(tmp_path) in str(err.value) and "python -m workers.data.files fashion-mnist" in str(err.value)


def test_fashion_mnist_found_in_resweep_data_in_torchvision_layout(tmp_path, monkeypatch):
    system = find_dataset("fashion-mnist")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for file in system.glob("*-ubyte.gz"):
        (raw / file.name).symlink_to(file)
    monkeypatch.setenv("RESWEEP_DATA", str(tmp_path))
    assert find_dataset("fashion-mnist") == raw


def test_synthetic_data_has_the_models_shape():
    model = ModelConfig(depth=8, in_channels=3, image_size=16, num_classes=7)
    data = load_data(trial(DataConfig(dataset="synthetic", train_size=300, val_size=50,
                                      test_size=40), model), CPU)
    assert data.counts == {"train": 300, "val": 50, "test": 40}
    assert data.image_shape == (3, 16, 16) and int(data.labels["train"].max()) < 7


# -- the dataset facts (workers/data/datasets.py) ----------------------------------------

def test_dataset_facts_match_the_fashion_mnist_files():
    facts = DATASET_FACTS["fashion-mnist"]
    arrays = read_fashion_mnist()
    assert tuple(arrays.train_images.shape) == (facts.train, facts.channels,
                                                facts.image_size, facts.image_size)
    assert arrays.test_images.shape[0] == facts.test and arrays.num_classes == facts.classes


@pytest.mark.parametrize("dataset, data", [
    ("fashion-mnist", dict(val_size=5000, train_size=12_000, test_size=3000)),
    ("fashion-mnist", dict(val_size=1000)),
    ("synthetic", dict(val_size=50, train_size=None, test_size=None)),
    ("synthetic", dict(val_size=0, train_size=64, test_size=2000)),
])
def test_split_sizes_are_the_counts_the_loader_gives(dataset, data):
    config = DataConfig(dataset=dataset, **data)
    sizes = split_sizes(config)
    loaded = load_data(trial(config), CPU)
    assert loaded.counts == {"train": sizes.train, "val": sizes.val, "test": sizes.test}


def test_planning_imports_no_torch():
    # The planner reads the dataset facts and the model stats' names; torch only when it
    # counts (a fresh interpreter: this one has torch already).
    code = ("import sys, workers.data, workers.data.datasets, search_spaces.expand, "
            "search_spaces.cost, models.complexity; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
