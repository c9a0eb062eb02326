"""Shortcut strategies A/B/C (paper Sec. 3.3 and Table 3), one registry entry each.

A shortcut factory takes ``(in_channels, out_channels, stride)`` and returns the module
added to the residual branch's output. Plain nets get no shortcut at all (the block is
built with ``shortcut=None``), so none of these is used for them.

- "A": identity; where the shape changes, stride-2 subsampling and zero-padded extra
  channels. No parameters.
- "B": identity where the shape is unchanged, else a 1x1 conv projection + BN.
- "C": a 1x1 conv projection + BN on every block.

A projection is ``nn.Sequential(conv1x1, BatchNorm2d)`` so its state-dict keys
(``shortcut.0.weight``, ``shortcut.1.*``) map one-to-one onto torchvision's
``downsample.0`` / ``downsample.1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import Registry

SHORTCUTS: Registry = Registry("shortcut")


class ZeroPadShortcut(nn.Module):
    """Option A on a shape change: subsample by `stride`, append zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"zero padding cannot shrink channels: {in_channels} -> "
                             f"{out_channels}")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W)
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads the last dims first: (W_left, W_right, H_top, H_bottom, C_front, C_back)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # (B, C_out, H/s, W/s)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 conv (no bias, BN follows) + BN: torchvision's `downsample`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _changes_shape(in_channels: int, out_channels: int, stride: int) -> bool:
    return stride != 1 or in_channels != out_channels


@SHORTCUTS.register("A")
def zero_pad_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if _changes_shape(in_channels, out_channels, stride):
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return nn.Identity()


@SHORTCUTS.register("B")
def projection_where_needed(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if _changes_shape(in_channels, out_channels, stride):
        return projection(in_channels, out_channels, stride)
    return nn.Identity()


@SHORTCUTS.register("C")
def projection_everywhere(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return projection(in_channels, out_channels, stride)
