"""Residual blocks (paper Fig. 5) and the stage builder shared by both conv families.

Every block computes ``relu(F(x) + shortcut(x))`` when it has a shortcut and
``relu(F(x))`` when it is plain (``shortcut=None``). Module names follow torchvision
(``conv1``, ``bn1``, ...), so torchvision weights load by renaming ``downsample`` only.
The downsampling stride sits in the (first) 3x3 conv, as in torchvision ("v1.5").
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from models.architectures import BLOCK_SHAPES
from models.registry import Registry

BLOCKS: Registry = Registry("block")

ShortcutFactory = Callable[[int, int, int], nn.Module]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: a BatchNorm follows every conv.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def _add_shortcut(out: torch.Tensor, x: torch.Tensor, shortcut: nn.Module | None):
    return out if shortcut is None else out + shortcut(x)


@BLOCKS.register("basic")
class BasicBlock(nn.Module):
    """Two 3x3 convs; output channels = `planes`."""

    expansion = BLOCK_SHAPES["basic"].expansion  # 1
    layers = BLOCK_SHAPES["basic"].layers  # 2 weighted layers counted in the depth

    def __init__(self, in_channels: int, planes: int, stride: int,
                 shortcut: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(_add_shortcut(out, x, self.shortcut))


@BLOCKS.register("bottleneck")
class Bottleneck(nn.Module):
    """1x1 reduce to `planes`, 3x3 (carries the stride), 1x1 expand to 4 x `planes`."""

    expansion = BLOCK_SHAPES["bottleneck"].expansion  # 4
    layers = BLOCK_SHAPES["bottleneck"].layers  # 3

    def __init__(self, in_channels: int, planes: int, stride: int,
                 shortcut: nn.Module | None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(_add_shortcut(out, x, self.shortcut))


def make_stage(block: type[nn.Module], in_channels: int, planes: int, num_blocks: int,
               stride: int, shortcut: ShortcutFactory | None) -> tuple[nn.Sequential, int]:
    """`num_blocks` blocks, the first with `stride`; returns (stage, output channels).

    `shortcut` is a factory from the SHORTCUTS registry, or None for a plain stage.
    """
    out_channels = planes * block.expansion
    blocks = []
    for i in range(num_blocks):
        block_in, block_stride = (in_channels, stride) if i == 0 else (out_channels, 1)
        sc = None if shortcut is None else shortcut(block_in, out_channels, block_stride)
        blocks.append(block(block_in, planes, block_stride, sc))
    return nn.Sequential(*blocks), out_channels


def network_units(model: nn.Module,
                  stage_names: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """[("conv1", stem conv), ("layer1.0", block), ..., ("fc", classifier)] in order."""
    units: list[tuple[str, nn.Module]] = [("conv1", model.conv1)]
    for stage_name in stage_names:
        for i, block in enumerate(getattr(model, stage_name)):
            units.append((f"{stage_name}.{i}", block))
    units.append(("fc", model.fc))
    return units


def scaled(channels: int, width: float) -> int:
    """Channels times the width multiplier, rounded (validation keeps it >= 1)."""
    return int(round(channels * width))


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
