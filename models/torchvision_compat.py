"""Load torchvision ResNet weights into an `imagenet`-family model (residual, shortcut B).

Only the projection shortcut's name differs: torchvision's ``layerX.Y.downsample.{0,1}``
is our ``layerX.Y.shortcut.{0,1}``. Does not import torchvision.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


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
