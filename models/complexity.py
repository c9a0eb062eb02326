"""Parameters and multiply-accumulates (MACs) of a network: in closed form, or counted.

Two ways to the same numbers:

- `model_stats(cfg)`: closed-form arithmetic over the architecture table
  (models/architectures.py) and the `ModelConfig`, standard library only, a few
  microseconds per network. The planner (study expansion, `resweep plan`, the cost model)
  asks for every trial's model, so planning never imports torch.
- `count_macs(cfg)` / `measured_model_stats(cfg)`: build the network on the meta device
  (no real memory), count `p.numel()` of its parameters and run one (1, C, H, W) input
  through it, summing from forward hooks. The reference the closed form is tested against
  (tests/models/test_closed_form_counts.py), and the fallback for a family without a closed form.

What is counted (the paper's Table 1 "FLOPs" counts the same thing):
  params: every weight and bias (conv weights have no bias; BN weight and bias count,
          its running statistics do not);
  conv:   output elements x (input channels / groups) x kernel height x kernel width
  linear: output elements x input features
BN, ReLU, pooling and additions are not counted (they are not multiply-adds of weighted
layers).

Note: torchvision-style bottlenecks stride in the 3x3 conv ("v1.5"), the paper strides in
the first 1x1. That makes ResNet-50/101/152 cost 4.09/7.80/11.51 G instead of the paper's
3.8/7.6/11.3 G; ``count_macs(cfg, paper_stride=True)`` recounts with the paper's
placement (same parameters, different arithmetic) and lands within 1.5% of Table 1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from models.architectures import (BLOCK_SHAPES, STAGE_CHANNELS, cifar_blocks_per_stage,
                                  imagenet_stages, scaled)
from models.config import ConfigError, ModelConfig, validate_model_config

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelStats:
    """What `resweep plan` shows of a network: parameters and multiply-accumulates for
    one input at the model's image size."""

    params: int
    macs: int


def model_stats(cfg: ModelConfig, cache: dict | None = None) -> ModelStats | ConfigError:
    """Parameters and MACs of `cfg`, or the ConfigError when the network is impossible
    (returned, not raised, so a planner can collect every problem). `cache` (a dict) is
    read first and receives a successful result, so a study keeps the stats of its own
    models. Closed form where the family has one (all three today), else counted on the
    meta device once per distinct config in a process."""
    if cache is not None:
        known = cache.get(cfg)
        if known is not None:
            return known
    stats = _model_stats(cfg)
    if cache is not None and isinstance(stats, ModelStats):
        cache[cfg] = stats
    return stats


@functools.lru_cache(maxsize=None)
def _model_stats(cfg: ModelConfig) -> ModelStats | ConfigError:
    closed_form = CLOSED_FORMS.get(cfg.family)
    if closed_form is None:
        return measured_model_stats(cfg)
    try:
        validate_model_config(cfg)  # the builders' own check: the same errors, no build
    except ConfigError as err:
        return err
    return closed_form(cfg)


# ---- closed form ----------------------------------------------------------------------

class _Tally:
    """Running totals of one network; `times` counts identical layers at once."""

    def __init__(self) -> None:
        self.params = 0
        self.macs = 0

    def conv(self, c_in: int, c_out: int, kernel: int, side_out: int, times: int = 1):
        """A bias-free kernel x kernel conv with a square output of side `side_out`."""
        weights = c_in * c_out * kernel * kernel
        self.params += times * weights
        self.macs += times * weights * side_out * side_out

    def batchnorm(self, channels: int, times: int = 1) -> None:
        self.params += times * 2 * channels  # weight and bias

    def linear(self, f_in: int, f_out: int, times: int = 1) -> None:
        self.params += times * (f_in * f_out + f_out)
        self.macs += times * f_in * f_out


def _side_out(side: int, kernel: int, stride: int, padding: int) -> int:
    """Output height (= width) of a conv or pool: floor((H + 2p - k) / s) + 1."""
    return (side + 2 * padding - kernel) // stride + 1


def _basic(t: _Tally, c_in: int, planes: int, side_out: int, side_in: int, times: int):
    t.conv(c_in, planes, 3, side_out, times)     # 3x3, carries the stride
    t.batchnorm(planes, times)
    t.conv(planes, planes, 3, side_out, times)
    t.batchnorm(planes, times)


def _bottleneck(t: _Tally, c_in: int, planes: int, side_out: int, side_in: int,
                times: int):
    out = planes * BLOCK_SHAPES["bottleneck"].expansion
    t.conv(c_in, planes, 1, side_in, times)      # 1x1 reduce, stride 1
    t.batchnorm(planes, times)
    t.conv(planes, planes, 3, side_out, times)   # 3x3, carries the stride ("v1.5")
    t.batchnorm(planes, times)
    t.conv(planes, out, 1, side_out, times)      # 1x1 expand
    t.batchnorm(out, times)


_BLOCKS: dict[str, Callable] = {"basic": _basic, "bottleneck": _bottleneck}

# Does shortcut X project (1x1 conv + BN) a block whose shape changes / does not change?
# A zero-pads (no parameters), B projects where the shape changes, C everywhere.
_PROJECTS = {"A": (False, False), "B": (True, False), "C": (True, True)}


def _stage(t: _Tally, cfg: ModelConfig, c_in: int, planes: int, blocks: int, stride: int,
           side: int) -> tuple[int, int]:
    """One stage of `blocks` blocks, the first with `stride`, as models.blocks.make_stage
    lays it out: the 2nd..last blocks are identical, so they are counted once, times
    blocks - 1. Returns (output channels, output side)."""
    c_out = planes * BLOCK_SHAPES[cfg.block].expansion
    side_out = _side_out(side, 3, stride, 1)  # = the 1x1 stride-s projection's side
    block = _BLOCKS[cfg.block]
    for times, block_in, block_side, changes in (
            (1, c_in, side, stride != 1 or c_in != c_out),
            (blocks - 1, c_out, side_out, False)):
        if times <= 0:
            continue
        block(t, block_in, planes, side_out, block_side, times)
        if cfg.residual and _PROJECTS[cfg.shortcut][0 if changes else 1]:
            t.conv(block_in, c_out, 1, side_out, times)
            t.batchnorm(c_out, times)
    return c_out, side_out


def _conv_net(cfg: ModelConfig, stem_kernel: int, stem_stride: int, max_pool: bool,
              blocks_per_stage: tuple[int, ...]) -> ModelStats:
    """stem conv + BN (+ 3x3/2 max-pool), the stages (stride 2 entering all but the first),
    global average pool, fc: models/networks.py's CifarResNet and ImageNetResNet."""
    t = _Tally()
    channels = STAGE_CHANNELS[cfg.family]
    c = scaled(channels[0], cfg.width)
    side = _side_out(cfg.image_size, stem_kernel, stem_stride, stem_kernel // 2)
    t.conv(cfg.in_channels, c, stem_kernel, side)
    t.batchnorm(c)
    if max_pool:
        side = _side_out(side, 3, 2, 1)
    for i, (blocks, planes) in enumerate(zip(blocks_per_stage, channels)):
        c, side = _stage(t, cfg, c, scaled(planes, cfg.width), blocks, 1 if i == 0 else 2,
                         side)
    t.linear(c, cfg.num_classes)
    return ModelStats(params=t.params, macs=t.macs)


def _cifar(cfg: ModelConfig) -> ModelStats:
    """3x3/1 stem, three stages of n blocks (depth = 6n+2 basic, 9n+2 bottleneck)."""
    n = cifar_blocks_per_stage(cfg.block, cfg.depth)
    return _conv_net(cfg, 3, 1, False, (n,) * len(STAGE_CHANNELS["cifar"]))


def _imagenet(cfg: ModelConfig) -> ModelStats:
    """7x7/2 stem, 3x3/2 max-pool, four stages (paper Table 1 or explicit `stages`)."""
    return _conv_net(cfg, 7, 2, True, imagenet_stages(cfg.depth, cfg.stages))


def _mlp(cfg: ModelConfig) -> ModelStats:
    """input projection, `depth` blocks of two hidden x hidden layers, output projection."""
    t = _Tally()
    t.linear(cfg.in_channels * cfg.image_size ** 2, cfg.hidden)
    t.linear(cfg.hidden, cfg.hidden, times=2 * cfg.depth)
    t.linear(cfg.hidden, cfg.num_classes)
    return ModelStats(params=t.params, macs=t.macs)


# family -> closed form; a family missing here is counted on the meta device.
CLOSED_FORMS: dict[str, Callable[[ModelConfig], ModelStats]] = {
    "cifar": _cifar, "imagenet": _imagenet, "mlp": _mlp}


# ---- counted on the meta device (torch) -----------------------------------------------

def measured_model_stats(cfg: ModelConfig) -> ModelStats | ConfigError:
    """`model_stats` by building the network on the meta device and counting: the
    reference for the closed form (about 0.1 s a network; imports torch)."""
    import torch

    from models.networks import build_model, count_params

    try:
        with torch.device("meta"):
            net = build_model(cfg)
    except ConfigError as err:
        return err
    params = count_params(net)          # BN weights and biases count; its MACs do not
    _drop_batchnorm(net)
    macs = count_model_macs(net, (cfg.in_channels, cfg.image_size, cfg.image_size))
    return ModelStats(params=params, macs=int(macs))


def count_model_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of `model` for one input of `input_shape` (C, H, W) or (F,), on the meta device.

    `model` must live on the meta device (or be cheap enough to run once on the CPU).
    """
    import torch
    from torch import nn

    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # BN on running stats: a batch of one is fine at any spatial size
    try:
        with torch.no_grad():
            model(torch.empty(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def count_macs(cfg: ModelConfig, paper_stride: bool = False) -> int:
    """MACs for one input of cfg.in_channels x cfg.image_size x cfg.image_size, counted
    on the meta device (`model_stats(cfg).macs` is the same number in closed form).

    paper_stride: count downsampling bottlenecks with the stride in their first 1x1 conv
    (the paper's ResNet) instead of the 3x3 conv the built network uses (torchvision's).
    Raises ConfigError for an invalid cfg. Allocates no real memory.
    """
    import torch

    from models.networks import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    if paper_stride:
        _move_bottleneck_stride_to_first_1x1(model)
    _drop_batchnorm(model)
    return count_model_macs(model, (cfg.in_channels, cfg.image_size, cfg.image_size))


def _move_bottleneck_stride_to_first_1x1(model: nn.Module) -> None:
    from models.blocks import Bottleneck

    for block in model.modules():
        if isinstance(block, Bottleneck) and block.conv2.stride != (1, 1):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


def _drop_batchnorm(model: nn.Module) -> None:
    """Swap BN for Identity in a throwaway meta model: same shapes, no MACs counted, and
    meta BN runs a slow Python decomposition (~4 ms a layer; ResNet-1202 took 7 s)."""
    from torch import nn

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
