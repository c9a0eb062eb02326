"""`build_model(cfg)`: ModelConfig -> nn.Module, after validation; `count_params`."""

from __future__ import annotations

from torch import nn

from models.architectures import imagenet_stages
from models.cifar import CifarResNet
from models.config import ModelConfig
from models.imagenet import ImageNetResNet
from models.mlp import MLPNet
from models.validation import validate_model_config


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the network `cfg` describes; raises ConfigError for an impossible one.

    Construction is cheap and device-agnostic: ``with torch.device("meta"):
    build_model(cfg)`` allocates nothing (study expansion does this for every trial).
    """
    validate_model_config(cfg)
    if cfg.family == "cifar":
        return CifarResNet(depth=cfg.depth, block=cfg.block, residual=cfg.residual,
                           shortcut=cfg.shortcut, width=cfg.width,
                           in_channels=cfg.in_channels, num_classes=cfg.num_classes)
    if cfg.family == "imagenet":
        return ImageNetResNet(stages=imagenet_stages(cfg.depth, cfg.stages), block=cfg.block,
                              residual=cfg.residual, shortcut=cfg.shortcut,
                              width=cfg.width, in_channels=cfg.in_channels,
                              num_classes=cfg.num_classes)
    # family == "mlp" (validated)
    return MLPNet(depth=cfg.depth, residual=cfg.residual,
                  in_features=cfg.in_channels * cfg.image_size ** 2, hidden=cfg.hidden,
                  num_classes=cfg.num_classes)


def count_params(model: nn.Module) -> int:
    """Number of parameters (weights and biases; not BN running statistics).

    Works on meta-device models too (it only reads shapes).
    """
    return sum(p.numel() for p in model.parameters())
