"""Residual blocks (paper Fig. 5), shortcut strategies A/B/C, and `make_stage`.

An architecture option is a key into a registry (timm-style "an option picks a
strategy"): ``block: bottleneck`` picks a block class from `BLOCKS`, ``shortcut: B`` a
shortcut factory from `SHORTCUTS`. Registering a name twice is a programming error.

Every block computes ``relu(F(x) + shortcut(x))`` when it has a shortcut and
``relu(F(x))`` when it is plain (``shortcut=None``). Module names follow torchvision
(``conv1``, ``bn1``, ...), so torchvision weights load by renaming ``downsample`` only.
The downsampling stride sits in the (first) 3x3 conv, as in torchvision ("v1.5").

Shortcuts (paper Sec. 3.3 and Table 3). A factory takes ``(in_channels, out_channels,
stride)`` and returns the module added to the residual branch's output; plain nets get
none at all.

- "A": identity; where the shape changes, stride-2 subsampling and zero-padded extra
  channels. No parameters.
- "B": identity where the shape is unchanged, else a 1x1 conv projection + BN.
- "C": a 1x1 conv projection + BN on every block.

A projection is ``nn.Sequential(conv1x1, BatchNorm2d)`` so its state-dict keys
(``shortcut.0.weight``, ``shortcut.1.*``) map one-to-one onto torchvision's
``downsample.0`` / ``downsample.1``.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import BLOCK_SHAPES
from models.config import ConfigError

T = TypeVar("T")


# ---- registries -----------------------------------------------------------------------

class Registry(Generic[T]):
    """Maps option names to implementations; `kind` names the option in messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@BLOCKS.register("basic")``. Raises ValueError on a duplicate."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"(as {self._items[name]!r})")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"model.{self.kind}: got {name!r}; allowed: {self.names()}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)


BLOCKS: Registry = Registry("block")
SHORTCUTS: Registry = Registry("shortcut")

ShortcutFactory = Callable[[int, int, int], nn.Module]


# ---- blocks ---------------------------------------------------------------------------

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


# ---- shortcuts A/B/C ------------------------------------------------------------------

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
    return nn.Sequential(conv1x1(in_channels, out_channels, stride),
                         nn.BatchNorm2d(out_channels))


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


# ---- stages ---------------------------------------------------------------------------

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

