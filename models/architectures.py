"""The ResNet architecture table: blocks, stage channels, blocks per stage (torch-free).

One table that the builders (models/blocks.py, models/networks.py) and the validation
(`validate_model_config` in models/config.py) both read, so a depth the validation
accepts is exactly a depth the builders can lay out. Like torchvision's
``_resnet(BasicBlock, [2, 2, 2, 2], ...)`` the depth is data: a family is its stage
channels, an ImageNet depth is a block type and its blocks per stage.

Standard library only: models/config.py and the study loader read this without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockShape:
    """layers: weighted layers of one block counted in the depth (2 basic, 3 bottleneck);
    expansion: block output channels / `planes` (1 basic, 4 bottleneck)."""

    layers: int
    expansion: int


BLOCK_SHAPES = {"basic": BlockShape(layers=2, expansion=1),
                "bottleneck": BlockShape(layers=3, expansion=4)}

# Channels of each stage at width 1.0 (the stem has the first stage's channels). A
# bottleneck stage outputs `expansion` times these.
STAGE_CHANNELS = {"cifar": (16, 32, 64),              # paper Sec. 4.2
                  "imagenet": (64, 128, 256, 512)}    # paper Table 1

# ImageNet depth -> (block, blocks per stage), paper Table 1 (torchvision resnet18..152).
IMAGENET_LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                    50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
                    152: ("bottleneck", (3, 8, 36, 3))}


def scaled(channels: int, width: float) -> int:
    """Channels times the width multiplier, rounded half to even (Python's `round`:
    16 x 0.15625 = 2.5 -> 2); validation keeps every stage at >= 1 channel."""
    return int(round(channels * width))


def cifar_depth_step(block: str) -> int:
    """A cifar net has depth = step * n + 2 (stem + fc): 6 (basic) or 9 (bottleneck),
    three stages of n blocks of `layers` weighted layers each."""
    return len(STAGE_CHANNELS["cifar"]) * BLOCK_SHAPES[block].layers


def cifar_blocks_per_stage(block: str, depth: int) -> int:
    """n of the paper: depth = 6n+2 (basic) or 9n+2 (bottleneck)."""
    return (depth - 2) // cifar_depth_step(block)


def imagenet_stages(depth: int, stages: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Explicit `stages` win; otherwise the paper's blocks per stage for `depth`."""
    return tuple(stages) if stages is not None else IMAGENET_LAYOUTS[depth][1]
