"""Multiply-accumulates (MACs) and parameters of a network, counted on the meta device.

`count_macs(cfg)` builds the network on the meta device (no real memory), runs one
(1, C, H, W) input through it and sums, from forward hooks:
  conv:   output elements x (input channels / groups) x kernel height x kernel width
  linear: output elements x input features
BN, ReLU, pooling and additions are not counted (they are not multiply-adds of weighted
layers; the paper's Table 1 "FLOPs" counts the same thing).

`model_stats(cfg)` gives both counts, or the ConfigError of an impossible network, once
per distinct `ModelConfig` in a process: the planner (study expansion, `resweep plan`,
the cost model) asks for every trial's model, and builds are deterministic. torch is
imported inside the counting functions, so importing this module (as `search_spaces`
does) costs no torch import until something is counted.

Note: torchvision-style bottlenecks stride in the 3x3 conv ("v1.5"), the paper strides in
the first 1x1. That makes ResNet-50/101/152 cost 4.09/7.80/11.51 G instead of the paper's
3.8/7.6/11.3 G; ``count_macs(cfg, paper_stride=True)`` recounts with the paper's
placement (same parameters, different arithmetic) and lands within 1.5% of Table 1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.config import ConfigError, ModelConfig

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
    (returned, not raised, so a planner can collect every problem). `cache` (a dict) also
    receives a successful result, so a study keeps the stats of its own models."""
    stats = _model_stats(cfg)
    if cache is not None and isinstance(stats, ModelStats):
        cache[cfg] = stats
    return stats


@functools.lru_cache(maxsize=None)
def _model_stats(cfg: ModelConfig) -> ModelStats | ConfigError:
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
    """MACs for one input of cfg.in_channels x cfg.image_size x cfg.image_size.

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
