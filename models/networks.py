"""The networks: the CIFAR, ImageNet and MLP families, then `build_model(cfg)`.

Reads top to bottom like torchvision's resnet.py: helpers, the families, the builder.
Blocks, shortcuts and `make_stage` are in models/blocks.py; the depth of a family is data
in models/architectures.py (stage channels, blocks per stage).

**cifar** (paper Sec. 4.2). 3x3 stem with 16 x width channels; three stages of n blocks
at 16/32/64 x width channels (stride 2 entering stages 2 and 3: feature maps 32 -> 16 ->
8 for a 32x32 input); global average pool; linear classifier.

- Basic blocks: depth = 6n + 2 (stem + 3 stages x n blocks x 2 layers + fc).
- Bottleneck blocks: depth = 9n + 2. Channel convention (as in He et al. 2016's
  ResNet-164): the 1x1/3x3 layers of a stage have 16/32/64 x width channels and the block
  output is 4x that (64/128/256 x width); the stem stays at 16 x width.

**imagenet** (paper Table 1; torchvision's resnet18...resnet152). 7x7/2 stem with 64 x
width channels, 3x3/2 max-pool, four stages of basic or bottleneck blocks at
64/128/256/512 x width (stride 2 entering stages 2-4), global average pool, fc. With
residual=True, shortcut="B" and width=1 this is exactly torchvision's network (same module
names apart from ``downsample`` -> ``shortcut``; the bottleneck's stride sits in its 3x3
conv, torchvision's "v1.5"); `load_torchvision_state_dict` loads its weights (without
importing torchvision).

**mlp**: the fully-connected toy of the seed paper summary, for seconds-long
gradient-flow runs. flatten (in_channels x image_size^2 features) -> input projection
Linear+ReLU to `hidden` -> `depth` blocks of two Linear+ReLU layers (residual: y = F(x) +
x; plain: y = F(x)) -> output projection Linear to num_classes (logits, no ReLU). Every
Linear is He-initialised (normal, std = sqrt(2 / fan_in)) with zero bias, as in the seed;
no normalisation layers, so depth shows its raw effect on gradient flow.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from models.architectures import (STAGE_CHANNELS, cifar_blocks_per_stage, imagenet_stages,
                                  scaled)
from models.blocks import BLOCKS, SHORTCUTS, make_stage
from models.config import ModelConfig, validate_model_config

CIFAR_CHANNELS = STAGE_CHANNELS["cifar"]  # (16, 32, 64)
IMAGENET_CHANNELS = STAGE_CHANNELS["imagenet"]  # (64, 128, 256, 512)


# ---- helpers shared by the conv families ----------------------------------------------

def network_units(model: nn.Module,
                  stage_names: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """[("conv1", stem conv), ("layer1.0", block), ..., ("fc", classifier)] in order."""
    units: list[tuple[str, nn.Module]] = [("conv1", model.conv1)]
    for stage_name in stage_names:
        for i, block in enumerate(getattr(model, stage_name)):
            units.append((f"{stage_name}.{i}", block))
    units.append(("fc", model.fc))
    return units


def init_conv_net(model: nn.Module) -> None:
    """He init for convs (torchvision's choice: fan_out, ReLU); BN to identity.

    Skipped on the meta device: there is no data to fill, and meta-device random fills
    are slow (study expansion builds every trial's model there).
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---- cifar ----------------------------------------------------------------------------

class CifarResNet(nn.Module):
    """conv1/bn1 (stem) -> layer1..layer3 -> global pool -> fc. Input (B, C, H, W)."""

    def __init__(self, depth: int = 20, block: str = "basic", residual: bool = True,
                 shortcut: str = "A", width: float = 1.0, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        block_cls = BLOCKS.get(block)
        shortcut_factory = SHORTCUTS.get(shortcut) if residual else None
        n = cifar_blocks_per_stage(block, depth)

        stem_channels = scaled(CIFAR_CHANNELS[0], width)
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        channels = stem_channels
        for i, planes in enumerate(CIFAR_CHANNELS):
            stage, channels = make_stage(block_cls, channels, scaled(planes, width), n,
                                         1 if i == 0 else 2, shortcut_factory)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))      # (B, 16w, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64w*e, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)       # (B, 64w*e)
        return self.fc(x)                           # (B, num_classes)

    def probe_units(self) -> list[tuple[str, nn.Module]]:
        """Stem, every block, classifier, in network order (for gradient_norms)."""
        return network_units(self, ("layer1", "layer2", "layer3"))


# ---- imagenet -------------------------------------------------------------------------

class ImageNetResNet(nn.Module):
    """conv1/bn1/maxpool -> layer1..layer4 -> avgpool -> fc. Input (B, C, H, W)."""

    def __init__(self, stages: tuple[int, ...] = (2, 2, 2, 2), block: str = "basic",
                 residual: bool = True, shortcut: str = "B", width: float = 1.0,
                 in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        block_cls = BLOCKS.get(block)
        shortcut_factory = SHORTCUTS.get(shortcut) if residual else None

        channels = scaled(IMAGENET_CHANNELS[0], width)
        self.conv1 = nn.Conv2d(in_channels, channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (num_blocks, planes) in enumerate(zip(stages, IMAGENET_CHANNELS)):
            stage, channels = make_stage(block_cls, channels, scaled(planes, width),
                                         num_blocks, 1 if i == 0 else 2, shortcut_factory)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64w, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512w*e, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)  # (B, num_classes)

    def probe_units(self) -> list[tuple[str, nn.Module]]:
        """Stem, every block, classifier, in network order (for gradient_norms)."""
        return network_units(self, ("layer1", "layer2", "layer3", "layer4"))


def convert_torchvision_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision resnet state-dict keys -> ours (values untouched)."""
    return {key.replace(".downsample.", ".shortcut."): value for key, value in sd.items()}


def load_torchvision_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy a torchvision resnet state dict into `model` (strict) and return `model`.

    Raises ValueError if the architectures differ (e.g. a shortcut other than B, a width
    multiplier, or another num_classes).
    """
    try:
        model.load_state_dict(convert_torchvision_state_dict(sd), strict=True)
    except RuntimeError as err:
        raise ValueError("state dict does not fit this model; torchvision ResNets match "
                         "family=imagenet, residual=true, shortcut=B, width=1 with the "
                         f"same depth and num_classes: {err}") from err
    return model


# ---- mlp ------------------------------------------------------------------------------

def he_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    if layer.weight.is_meta:  # shapes only (see init_conv_net)
        return layer
    nn.init.normal_(layer.weight, mean=0.0, std=math.sqrt(2.0 / in_features))
    nn.init.zeros_(layer.bias)
    return layer


class MLPBlock(nn.Module):
    """relu(fc2(relu(fc1(x)))) (+ x when residual)."""

    def __init__(self, features: int, residual: bool) -> None:
        super().__init__()
        self.fc1 = he_linear(features, features)
        self.fc2 = he_linear(features, features)
        self.relu = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, hidden)
        out = self.relu(self.fc2(self.relu(self.fc1(x))))
        return out + x if self.residual else out


class MLPNet(nn.Module):
    """input_proj -> blocks[0..depth-1] -> output_proj. Input (B, ...) flattened."""

    def __init__(self, depth: int, residual: bool, in_features: int, hidden: int,
                 num_classes: int) -> None:
        super().__init__()
        self.input_proj = he_linear(in_features, hidden)
        self.relu = nn.ReLU()
        self.blocks = nn.Sequential(*(MLPBlock(hidden, residual) for _ in range(depth)))
        self.output_proj = he_linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.input_proj(torch.flatten(x, 1)))  # (B, hidden)
        return self.output_proj(self.blocks(x))  # (B, num_classes)

    def probe_units(self) -> list[tuple[str, nn.Module]]:
        """Input projection, every block, output projection (for gradient_norms)."""
        return ([("input_proj", self.input_proj)]
                + [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]
                + [("output_proj", self.output_proj)])


# ---- build ----------------------------------------------------------------------------

def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the network `cfg` describes; raises ConfigError for an impossible one.

    Construction is cheap and device-agnostic: ``with torch.device("meta"):
    build_model(cfg)`` allocates nothing (study expansion does this for every trial).
    """
    validate_model_config(cfg)
    if cfg.family == "cifar":
        return CifarResNet(depth=cfg.depth, block=cfg.block, residual=cfg.residual,
                           shortcut=cfg.shortcut, width=cfg.width,
                           in_channels=cfg.in_channels, num_classes=cfg.num_classes)
    if cfg.family == "imagenet":
        return ImageNetResNet(stages=imagenet_stages(cfg.depth, cfg.stages), block=cfg.block,
                              residual=cfg.residual, shortcut=cfg.shortcut,
                              width=cfg.width, in_channels=cfg.in_channels,
                              num_classes=cfg.num_classes)
    # family == "mlp" (validated)
    return MLPNet(depth=cfg.depth, residual=cfg.residual,
                  in_features=cfg.in_channels * cfg.image_size ** 2, hidden=cfg.hidden,
                  num_classes=cfg.num_classes)


def count_params(model: nn.Module) -> int:
    """Number of parameters (weights and biases; not BN running statistics).

    Works on meta-device models too (it only reads shapes).
    """
    return sum(p.numel() for p in model.parameters())
