"""The ImageNet family (paper Table 1; torchvision's resnet18...resnet152).

7x7/2 stem with 64 x width channels, 3x3/2 max-pool, four stages of basic or bottleneck
blocks at 64/128/256/512 x width (stride 2 entering stages 2-4), global average pool, fc.
With residual=True, shortcut="B" and width=1 this is exactly torchvision's network (same
module names apart from ``downsample`` -> ``shortcut``; the bottleneck's stride sits in its
3x3 conv, torchvision's "v1.5").
"""

from __future__ import annotations

import torch
from torch import nn

from models.architectures import STAGE_CHANNELS
from models.blocks import BLOCKS, init_conv_net, make_stage, network_units, scaled
from models.shortcuts import SHORTCUTS

CHANNELS = STAGE_CHANNELS["imagenet"]  # (64, 128, 256, 512)


class ImageNetResNet(nn.Module):
    """conv1/bn1/maxpool -> layer1..layer4 -> avgpool -> fc. Input (B, C, H, W)."""

    def __init__(self, stages: tuple[int, ...] = (2, 2, 2, 2), block: str = "basic",
                 residual: bool = True, shortcut: str = "B", width: float = 1.0,
                 in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        block_cls = BLOCKS.get(block)
        shortcut_factory = SHORTCUTS.get(shortcut) if residual else None

        channels = scaled(CHANNELS[0], width)
        self.conv1 = nn.Conv2d(in_channels, channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (num_blocks, planes) in enumerate(zip(stages, CHANNELS)):
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
