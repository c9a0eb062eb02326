"""The CIFAR family (paper Sec. 4.2).

3x3 stem with 16 x width channels; three stages of n blocks at 16/32/64 x width channels
(stride 2 entering stages 2 and 3: feature maps 32 -> 16 -> 8 for a 32x32 input); global
average pool; linear classifier.

- Basic blocks: depth = 6n + 2 (stem + 3 stages x n blocks x 2 layers + fc).
- Bottleneck blocks: depth = 9n + 2. Channel convention (as in He et al. 2016's
  ResNet-164): the 1x1/3x3 layers of a stage have 16/32/64 x width channels and the block
  output is 4x that (64/128/256 x width); the stem stays at 16 x width.
"""

from __future__ import annotations

import torch
from torch import nn

from models.architectures import STAGE_CHANNELS, cifar_blocks_per_stage
from models.blocks import BLOCKS, init_conv_net, make_stage, network_units, scaled
from models.shortcuts import SHORTCUTS

CHANNELS = STAGE_CHANNELS["cifar"]  # (16, 32, 64)


class CifarResNet(nn.Module):
    """conv1/bn1 (stem) -> layer1..layer3 -> global pool -> fc. Input (B, C, H, W)."""

    def __init__(self, depth: int = 20, block: str = "basic", residual: bool = True,
                 shortcut: str = "A", width: float = 1.0, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        block_cls = BLOCKS.get(block)
        shortcut_factory = SHORTCUTS.get(shortcut) if residual else None
        n = cifar_blocks_per_stage(block, depth)

        stem_channels = scaled(CHANNELS[0], width)
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        channels = stem_channels
        for i, planes in enumerate(CHANNELS):
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

