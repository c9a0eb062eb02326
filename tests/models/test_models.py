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


# ---------------------------------------------------------------- imagenet / torchvision
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160,
                      152: 60_192_808}


def imagenet_cfg(depth: int, **fields) -> ModelConfig:
    block = "basic" if depth < 50 else "bottleneck"
    return ModelConfig(family="imagenet", depth=depth, block=block, residual=True,
                       shortcut="B", num_classes=1000, image_size=224, **fields)


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_imagenet_b_matches_torchvision_parameters_and_keys(depth):
    import torchvision

    from models.networks import convert_torchvision_state_dict

    with torch.device("meta"):
        ours = build_model(imagenet_cfg(depth))
        theirs = getattr(torchvision.models, f"resnet{depth}")()
    assert count_params(ours) == count_params(theirs) == TORCHVISION_PARAMS[depth]
    converted = convert_torchvision_state_dict(theirs.state_dict())
    assert {k: v.shape for k, v in converted.items()} == \
        {k: v.shape for k, v in ours.state_dict().items()}


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine terms, so eval outputs test them too."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)


@pytest.mark.parametrize("depth", [18, 50])
def test_imagenet_outputs_equal_torchvision_after_loading_its_weights(depth):
    import torchvision

    from models import load_torchvision_state_dict

    torch.manual_seed(depth)
    theirs = getattr(torchvision.models, f"resnet{depth}")()
    _randomise_batchnorm(theirs)
    ours = load_torchvision_state_dict(build_model(imagenet_cfg(depth)), theirs.state_dict())
    theirs.eval()
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.std() > 0.1  # a real signal, not all zeros
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_torchvision_weights_do_not_fit_other_shortcuts():
    import torchvision

    from models import load_torchvision_state_dict

    with torch.device("meta"):
        theirs = torchvision.models.resnet18()
        ours = build_model(imagenet_cfg(18).replace(shortcut="A"))
    with pytest.raises(ValueError, match="shortcut=B"):
        load_torchvision_state_dict(ours, theirs.state_dict())


def test_imagenet_shortcut_variants_and_plain_counts():
    b = count_params(meta_build(**imagenet_cfg(34).to_dict()))
    a = count_params(meta_build(**imagenet_cfg(34).replace(shortcut="A").to_dict()))
    plain = count_params(meta_build(**imagenet_cfg(34).replace(residual=False).to_dict()))
    # B: projections entering stages 2-4 (64->128, 128->256, 256->512).
    assert b - a == projection_params(64, 128) + projection_params(128, 256) \
        + projection_params(256, 512)
    assert plain == a == 21_797_672 - (b - a)


def test_imagenet_explicit_stages_override_depth():
    cfg = ModelConfig(family="imagenet", depth=18, block="basic", stages=(1, 1, 1, 1),
                      num_classes=10)
    model = build_model(cfg)  # a ResNet-10
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_imagenet_forward_shapes():
    torch.manual_seed(0)
    for cfg in (ModelConfig(family="imagenet", depth=18, in_channels=1, num_classes=10),
                ModelConfig(family="imagenet", depth=50, block="bottleneck", width=0.25,
                            shortcut="A", num_classes=7),
                ModelConfig(family="imagenet", depth=34, residual=False, width=0.125)):
        assert build_model(cfg)(torch.randn(2, cfg.in_channels, 64, 64)).shape == \
            (2, cfg.num_classes)


# ---------------------------------------------------------------- mlp
def test_mlp_shape_and_structure():
    cfg = ModelConfig(family="mlp", depth=10, hidden=32, in_channels=1, image_size=28,
                      num_classes=10)
    model = build_model(cfg)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert len(model.blocks) == 10
    # input projection + 2 layers per block + output projection, all with biases
    assert count_params(model) == (784 * 32 + 32) + 10 * 2 * (32 * 32 + 32) + (32 * 10 + 10)


def test_mlp_layers_are_he_initialised():
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="mlp", depth=4, hidden=512, in_channels=1,
                                    image_size=16))
    std = model.blocks[0].fc1.weight.std().item()
    assert std == pytest.approx((2 / 512) ** 0.5, rel=0.02)
    assert model.blocks[0].fc1.bias.abs().sum() == 0


def test_residual_and_plain_mlp_differ_only_in_the_addition():
    cfg = ModelConfig(family="mlp", depth=3, hidden=8, in_channels=1, image_size=4)
    torch.manual_seed(1)
    residual = build_model(cfg)
    torch.manual_seed(1)
    plain = build_model(cfg.replace(residual=False))
    x = torch.randn(3, 8)  # (B, hidden)
    h = residual.blocks[0].fc1(x)
    assert torch.equal(plain.blocks[0](x), torch.relu(plain.blocks[0].fc2(torch.relu(h))))
    assert torch.allclose(residual.blocks[0](x), plain.blocks[0](x) + x)


# ---------------------------------------------------------------- every family on meta
@pytest.mark.parametrize("cfg", [
    ModelConfig(family="cifar", depth=1202),
    ModelConfig(family="cifar", depth=164, block="bottleneck", shortcut="C"),
    ModelConfig(family="imagenet", depth=152, block="bottleneck"),
    ModelConfig(family="mlp", depth=100, hidden=1024, image_size=224),
], ids=["cifar-1202", "cifar-164-bottleneck", "imagenet-152", "mlp-100"])
def test_every_family_builds_on_meta(cfg):
    with torch.device("meta"):
        model = build_model(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert count_params(model) > 0


# ---------------------------------------------------------------- MACs
# Paper Table 1 multiply-adds (G). Our bottlenecks stride in the 3x3 conv (torchvision),
# which costs more for 50/101/152; with the paper's placement the counts match Table 1.
PAPER_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
TORCHVISION_MACS = {18: 1_814_073_344, 34: 3_663_761_408, 50: 4_089_184_256,
                    101: 7_801_405_440, 152: 11_513_626_624}


@pytest.mark.parametrize("depth", sorted(PAPER_GMACS))
def test_imagenet_macs_match_paper_table_1(depth):
    from models import count_macs

    cfg = imagenet_cfg(depth)
    assert count_macs(cfg) == TORCHVISION_MACS[depth]
    paper_placement = count_macs(cfg, paper_stride=True)
    assert paper_placement == pytest.approx(PAPER_GMACS[depth] * 1e9, rel=0.03)
    if depth < 50:  # basic blocks have no 1x1 conv: both placements are the same net
        assert paper_placement == TORCHVISION_MACS[depth]


def test_cifar_and_mlp_macs_are_the_analytic_sums():
    from models import count_macs

    # ResNet-20 at 32x32: stem 32*32*16*27; stage 1: 6 convs at 32x32, 16->16;
    # stages 2/3: one strided conv c->2c plus five 2c->2c convs at half the size; fc 64*10.
    stem, stage1 = 32 * 32 * 16 * 27, 6 * 32 * 32 * 16 * 144
    stage2 = 16 * 16 * 32 * (16 * 9 + 5 * 32 * 9)
    stage3 = 8 * 8 * 64 * (32 * 9 + 5 * 64 * 9)
    assert count_macs(ModelConfig(depth=20)) == stem + stage1 + stage2 + stage3 + 640 \
        == 40_551_040
    mlp = ModelConfig(family="mlp", depth=10, hidden=64, in_channels=1, image_size=28)
    assert count_macs(mlp) == 784 * 64 + 20 * 64 * 64 + 64 * 10


# ---------------------------------------------------------------- invalid configs
INVALID = [
    (dict(depth=21), "model.depth", "21", "6n+2"),
    (dict(depth=26, block="bottleneck"), "model.depth", "26", "9n+2"),
    (dict(depth=2), "model.depth", "2", "6n+2"),
    (dict(shortcut="D"), "model.shortcut", "'D'", "['A', 'B', 'C']"),
    (dict(width=0), "model.width", "0", "> 0"),
    (dict(width=-1.5), "model.width", "-1.5", "> 0"),
    (dict(width=0.01), "model.width", "0.01", "width >="),
    (dict(family="vgg"), "model.family", "'vgg'", "['cifar', 'imagenet', 'mlp']"),
    (dict(block="wide"), "model.block", "'wide'", "['basic', 'bottleneck']"),
    (dict(residual="yes"), "model.residual", "'yes'", "true or false"),
    (dict(in_channels=0), "model.in_channels", "0", ">= 1"),
    (dict(num_classes=1.5), "model.num_classes", "1.5", "integer"),
    (dict(stages=(2, 2, 2)), "model.stages", "[2, 2, 2]", "imagenet"),
    (dict(family="imagenet", depth=20), "model.depth", "20", "[18, 34, 50, 101, 152]"),
    (dict(family="imagenet", depth=50, block="basic"), "model.block", "'basic'",
     "bottleneck"),
    (dict(family="imagenet", stages=(2, 2, 2)), "model.stages", "[2, 2, 2]", "four"),
    (dict(family="imagenet", stages=(2, 0, 2, 2)), "model.stages", "[2, 0, 2, 2]", ">= 1"),
    (dict(family="mlp", hidden=0), "model.hidden", "0", ">= 1"),
]


@pytest.mark.parametrize("fields,field,value,allowed", INVALID,
                         ids=[f"{i[1]}={i[2]}" for i in INVALID])
def test_invalid_config_names_field_value_and_rule(fields, field, value, allowed):
    from models import validate_model_config

    cfg = ModelConfig(**fields)
    with pytest.raises(ConfigError) as err:
        validate_model_config(cfg)
    message = str(err.value)
    assert message.startswith(f"{field}: got {value}")
    assert allowed in message
    with pytest.raises(ValueError, match=field), torch.device("meta"):
        build_model(cfg)  # build_model validates too; ConfigError is a ValueError


def test_registries_reject_duplicates_and_list_options():
    from models import config
    from models.blocks import BLOCKS, SHORTCUTS

    # The registries (torch) implement exactly the names the configs accept (stdlib).
    assert BLOCKS.names() == list(config.BLOCKS) == ["basic", "bottleneck"]
    assert SHORTCUTS.names() == list(config.SHORTCUTS) == ["A", "B", "C"]
    with pytest.raises(ValueError, match="already registered"):
        SHORTCUTS.register("A")(lambda c_in, c_out, stride: None)
    with pytest.raises(ConfigError, match=r"model.shortcut: got 'D'; allowed: \['A'"):
        SHORTCUTS.get("D")


def test_option_a_shortcut_subsamples_and_zero_pads():
    from models.blocks import SHORTCUTS

    shortcut = SHORTCUTS.get("A")(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0
    assert isinstance(SHORTCUTS.get("A")(16, 16, 1), torch.nn.Identity)
    assert isinstance(SHORTCUTS.get("B")(16, 16, 1), torch.nn.Identity)
    assert not isinstance(SHORTCUTS.get("C")(16, 16, 1), torch.nn.Identity)
