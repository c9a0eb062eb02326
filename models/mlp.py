"""The fully-connected toy of the seed paper summary, for seconds-long gradient-flow runs.

flatten (in_channels x image_size^2 features) -> input projection Linear+ReLU to `hidden`
-> `depth` blocks of two Linear+ReLU layers (residual: y = F(x) + x; plain: y = F(x))
-> output projection Linear to num_classes (logits, no ReLU).
Every Linear is He-initialised (normal, std = sqrt(2 / fan_in)) with zero bias, as in the
seed; no normalisation layers, so depth shows its raw effect on gradient flow.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def he_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    if layer.weight.is_meta:  # shapes only (see blocks.init_conv_net)
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
