"""models/: parameter counts, shapes, shortcuts, validation, meta-device builds."""

from __future__ import annotations

import pytest
import torch

from models import ConfigError, ModelConfig, build_model, count_params

torch.set_num_threads(1)

# Option-A CIFAR ResNets (in_channels=3, num_classes=10): exact counts and the paper's
# Table 6 rounding. (272,474 often quoted for ResNet-20 is the option-B count.)
CIFAR_A_PARAMS = {20: (269_722, "0.27M"), 32: (464_154, "0.46M"), 44: (658_586, "0.66M"),
                  56: (853_018, "0.85M"), 110: (1_727_962, "1.7M"),
                  1202: (19_421_274, "19.4M")}


def paper_rounding(n: int) -> str:
    """Table 6 style: two decimals below 1M, one above."""
    return f"{n / 1e6:.2f}M" if n < 1e6 else f"{n / 1e6:.1f}M"


def meta_build(**fields) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(ModelConfig(**fields))


@pytest.mark.parametrize("depth", sorted(CIFAR_A_PARAMS))
def test_cifar_option_a_counts_match_table_6(depth):
    exact, paper = CIFAR_A_PARAMS[depth]
    n = count_params(meta_build(family="cifar", depth=depth, shortcut="A"))
    assert n == exact
    assert paper_rounding(n) == paper


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_plain_twin_has_the_residual_count(depth):
    residual = count_params(meta_build(depth=depth, residual=True, shortcut="A"))
    for shortcut in ("A", "B", "C"):  # the shortcut field means nothing for a plain net
        plain = count_params(meta_build(depth=depth, residual=False, shortcut=shortcut))
        assert plain == residual


def projection_params(c_in: int, c_out: int) -> int:
    return c_in * c_out + 2 * c_out  # 1x1 conv (no bias) + BN weight and bias


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_cifar_b_and_c_add_exactly_their_projections(depth):
    n = (depth - 2) // 6
    a = count_params(meta_build(depth=depth, shortcut="A"))
    b = count_params(meta_build(depth=depth, shortcut="B"))
    c = count_params(meta_build(depth=depth, shortcut="C"))
    # B: projections only entering stages 2 and 3 (16->32, 32->64).
    assert b - a == projection_params(16, 32) + projection_params(32, 64) == 2_752
    # C: a projection on all 3n blocks: the first of each stage changes width.
    c_extra = sum(projection_params(ci, co) + (n - 1) * projection_params(co, co)
                  for ci, co in ((16, 16), (16, 32), (32, 64)))
    assert c - a == c_extra


def test_cifar_forward_shapes_fashion_mnist_and_cifar():
    torch.manual_seed(0)
    for cfg in (ModelConfig(depth=20, in_channels=1, image_size=28),
                ModelConfig(depth=20, in_channels=3, num_classes=100, width=0.5),
                ModelConfig(depth=29, block="bottleneck", shortcut="B", in_channels=1),
                ModelConfig(depth=14, residual=False, width=2)):
        x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
        assert build_model(cfg)(x).shape == (2, cfg.num_classes)


def test_width_multiplier_scales_stage_channels():
    model = build_model(ModelConfig(depth=8, width=0.5, in_channels=1))
    assert model.conv1.out_channels == 8
    assert [s[0].conv1.out_channels for s in (model.layer1, model.layer2, model.layer3)] \
        == [8, 16, 32]
    assert model.fc.in_features == 32


def test_meta_device_build_allocates_nothing():
    model = meta_build(depth=110, shortcut="C")
    assert all(p.is_meta for p in model.parameters())
