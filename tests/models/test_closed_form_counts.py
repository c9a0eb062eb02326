"""models.complexity: the closed-form counts equal the meta-device counts, torch-free.

The planner counts every network in closed form (`model_stats`); the meta-device build
(`count_params(build_model(cfg))`, `count_macs(cfg)`) is the reference. Compared on a
sample of every family: depths, widths (fractional ones and their round-half-to-even
channels), blocks, shortcuts A/B/C, plain and residual, input channels, image sizes
(odd and tiny too) and classes; impossible networks give the same error.
"""

from __future__ import annotations

import itertools
import random
import re
import subprocess
import sys

import pytest
import torch

from models import ConfigError, ModelConfig, build_model, count_macs, count_params
from models.complexity import measured_model_stats, model_stats

torch.set_num_threads(1)

# Widths whose channels round in every way: 16 x 0.15625 = 2.5 -> 2 (half to even),
# 16 x 0.09375 = 1.5 -> 2, 16 x 0.3 = 4.8 -> 5 and 64 x 0.3 = 19.2 -> 19.
WIDTHS = (0.0625, 0.09375, 0.15625, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5)
RESIDUAL_SHORTCUTS = ((True, "A"), (True, "B"), (True, "C"), (False, "A"))


def _cifar_sample() -> list[ModelConfig]:
    rng = random.Random(0)
    grid = list(itertools.product(
        [("basic", d) for d in (8, 14, 20, 32, 56)] +
        [("bottleneck", d) for d in (11, 20, 29, 47)],
        WIDTHS, RESIDUAL_SHORTCUTS,
        [(3, 32, 10), (1, 28, 10), (3, 33, 100), (1, 7, 2), (2, 1, 5)]))
    picked = rng.sample(grid, 60)
    # Every block x shortcut at the paper's sizes, whatever the draw.
    picked += [((block, depth), 1.0, rs, (3, 32, 10)) for (block, depth), rs in
               itertools.product((("basic", 20), ("bottleneck", 29)), RESIDUAL_SHORTCUTS)]
    return [ModelConfig(family="cifar", block=block, depth=depth, width=width,
                        residual=residual, shortcut=shortcut, in_channels=c,
                        image_size=size, num_classes=classes)
            for (block, depth), width, (residual, shortcut), (c, size, classes) in picked]


def _imagenet_sample() -> list[ModelConfig]:
    layouts = [dict(depth=18, block="basic"), dict(depth=34, block="basic"),
               dict(depth=50, block="bottleneck"),
               dict(depth=18, block="basic", stages=(1, 2, 1, 1)),
               dict(depth=18, block="bottleneck", stages=(1, 1, 2, 1))]
    sizes = [(3, 224, 1000), (3, 64, 10), (1, 37, 7), (3, 1, 2)]
    rng = random.Random(1)
    grid = list(itertools.product(layouts, (0.25, 0.3, 1.0), RESIDUAL_SHORTCUTS, sizes))
    return [ModelConfig(family="imagenet", width=width, residual=residual,
                        shortcut=shortcut, in_channels=c, image_size=size,
                        num_classes=classes, **layout)
            for layout, width, (residual, shortcut), (c, size, classes)
            in rng.sample(grid, 24)]


def _mlp_sample() -> list[ModelConfig]:
    return [ModelConfig(family="mlp", depth=depth, residual=residual, hidden=hidden,
                        in_channels=c, image_size=size, num_classes=classes)
            for depth, residual, hidden, (c, size, classes) in itertools.product(
                (1, 4, 20), (True, False), (8, 64), ((1, 28, 10), (3, 5, 3)))]


SAMPLE = _cifar_sample() + _imagenet_sample() + _mlp_sample()


def _label(cfg: ModelConfig) -> str:
    shape = "x".join(map(str, cfg.stages)) if cfg.stages else cfg.depth
    return (f"{cfg.family}-{shape}-{cfg.block}-{'res' if cfg.residual else 'plain'}"
            f"-{cfg.shortcut}-w{cfg.width:g}-c{cfg.in_channels}-s{cfg.image_size}"
            f"-k{cfg.num_classes}-h{cfg.hidden}")


@pytest.mark.parametrize("cfg", SAMPLE, ids=_label)
def test_closed_form_equals_the_meta_device_counts(cfg):
    with torch.device("meta"):
        params = count_params(build_model(cfg))
    assert model_stats(cfg) == measured_model_stats(cfg)
    assert (model_stats(cfg).params, model_stats(cfg).macs) == (params, count_macs(cfg))


def test_the_sample_covers_every_family_block_and_shortcut():
    seen = {(c.family, c.block, c.residual, c.shortcut) for c in SAMPLE}
    for family, block, (residual, shortcut) in itertools.product(
            ("cifar", "imagenet"), ("basic", "bottleneck"), RESIDUAL_SHORTCUTS):
        assert (family, block, residual, shortcut) in seen
    assert {c.width for c in SAMPLE if c.family == "cifar"} == set(WIDTHS)


def test_paper_counts_in_closed_form():
    # Table 6 (option A) and torchvision's ResNet-50 (option B), without building.
    assert model_stats(ModelConfig(depth=110)).params == 1_727_962
    assert model_stats(ModelConfig(depth=1202)).params == 19_421_274
    r50 = ModelConfig(family="imagenet", depth=50, block="bottleneck", shortcut="B",
                      num_classes=1000, image_size=224)
    assert model_stats(r50).params == 25_557_032


@pytest.mark.parametrize("fields", [dict(depth=21), dict(depth=26, block="bottleneck"),
                                    dict(width=0.01), dict(family="mlp", stages=(1, 1)),
                                    dict(family="imagenet", depth=20),
                                    dict(family="imagenet", depth=50, block="basic")])
def test_impossible_networks_give_the_builders_error(fields):
    cfg = ModelConfig(**fields)
    closed, measured = model_stats(cfg), measured_model_stats(cfg)
    assert isinstance(closed, ConfigError) and isinstance(measured, ConfigError)
    assert str(closed) == str(measured)
    with pytest.raises(ConfigError, match=re.escape(str(closed))):
        build_model(cfg)


def test_cache_is_read_and_filled():
    cache: dict = {}
    cfg = ModelConfig(depth=56, width=0.5)
    assert model_stats(cfg, cache) is cache[cfg]
    sentinel = object()
    cache[cfg] = sentinel
    assert model_stats(cfg, cache) is sentinel   # the study's own stats win
    assert ModelConfig(depth=21) not in (model_stats(ModelConfig(depth=21), cache), cache)


def test_closed_form_counting_imports_no_torch():
    code = ("import sys\n"
            "from models.config import ModelConfig\n"
            "from models.complexity import model_stats\n"
            "for f in ('cifar', 'imagenet', 'mlp'):\n"
            "    d = 18 if f == 'imagenet' else 20\n"
            "    assert model_stats(ModelConfig(family=f, depth=d)).params > 0\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
