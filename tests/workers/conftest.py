"""Fixtures of the workers tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def image_tree(tmp_path):
    """image_tree({split: images per class}) -> tmp_path, now an image-folder data set:
    SPLIT/CLASS/*.png for the classes ant, bee, cat (random 40x48 RGB pictures)."""
    def write(per_class: dict[str, int]) -> Path:
        from PIL import Image

        rng = np.random.default_rng(1)
        for split, count in per_class.items():
            for cls in ("ant", "bee", "cat"):
                folder = tmp_path / split / cls
                folder.mkdir(parents=True)
                for i in range(count):
                    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)  # (H, W, C)
                    Image.fromarray(pixels).save(folder / f"{cls}{i}.png")
        return tmp_path
    return write
