"""`validate_model_config(cfg)`: reject impossible architectures before anything runs.

Every message names the field (``model.depth``), the value received and what is allowed.
Study expansion calls this (through build_model on the meta device) for every trial.
"""

from __future__ import annotations

from numbers import Real

from models.config import BLOCKS, FAMILIES, SHORTCUTS, ConfigError, ModelConfig

IMAGENET_DEPTHS = {18: "basic", 34: "basic", 50: "bottleneck", 101: "bottleneck",
                   152: "bottleneck"}
CIFAR_LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}
BASE_CHANNELS = {"cifar": 16, "imagenet": 64}  # narrowest stage before the multiplier


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ConfigError for the first invalid field of `cfg`; return None if valid."""
    _check_choice("family", cfg.family, FAMILIES)
    _check_choice("block", cfg.block, BLOCKS)
    _check_choice("shortcut", cfg.shortcut, SHORTCUTS)
    if not isinstance(cfg.residual, bool):
        raise ConfigError(f"model.residual: got {cfg.residual!r}; allowed: true or false")
    for field in ("depth", "in_channels", "num_classes", "image_size", "hidden"):
        _check_positive_int(field, getattr(cfg, field))
    if isinstance(cfg.width, bool) or not isinstance(cfg.width, Real) or not cfg.width > 0:
        raise ConfigError(f"model.width: got {cfg.width!r}; allowed: a number > 0 "
                          "(channel multiplier, 1.0 = the paper's widths)")
    if cfg.family in BASE_CHANNELS:
        narrowest = int(round(BASE_CHANNELS[cfg.family] * cfg.width))
        if narrowest < 1:
            raise ConfigError(
                f"model.width: got {cfg.width!r}; the narrowest {cfg.family} stage would "
                f"have {narrowest} channels; allowed: width >= "
                f"{0.5 / BASE_CHANNELS[cfg.family]:g}")
    if cfg.family != "imagenet" and cfg.stages is not None:
        raise ConfigError(f"model.stages: got {list(cfg.stages)}; only the imagenet family "
                          "takes explicit stages (leave it null)")
    {"cifar": _check_cifar, "imagenet": _check_imagenet, "mlp": lambda c: None}[
        cfg.family](cfg)


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"model.{field}: got {value!r}; allowed: {list(allowed)}")


def _check_positive_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model.{field}: got {value!r}; allowed: an integer >= 1")


def _check_cifar(cfg: ModelConfig) -> None:
    step = 3 * CIFAR_LAYERS_PER_BLOCK[cfg.block]  # 6 (basic) or 9 (bottleneck)
    if cfg.depth < step + 2 or (cfg.depth - 2) % step:
        examples = ", ".join(str(step * n + 2) for n in range(1, 5))
        raise ConfigError(
            f"model.depth: got {cfg.depth}; a {cfg.block} cifar net needs depth = "
            f"{step}n+2 with n >= 1 ({examples}, ...)")


def _check_imagenet(cfg: ModelConfig) -> None:
    if cfg.stages is not None:
        stages = list(cfg.stages)
        if len(stages) != 4 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                   for s in stages):
            raise ConfigError(f"model.stages: got {stages}; allowed: four integers >= 1 "
                              "(blocks per stage, e.g. [3, 4, 6, 3])")
        return
    if cfg.depth not in IMAGENET_DEPTHS:
        raise ConfigError(
            f"model.depth: got {cfg.depth}; an imagenet net needs depth in "
            f"{sorted(IMAGENET_DEPTHS)} (or explicit model.stages)")
    needed = IMAGENET_DEPTHS[cfg.depth]
    if cfg.block != needed:
        raise ConfigError(
            f"model.block: got {cfg.block!r}; imagenet depth {cfg.depth} uses {needed!r} "
            "blocks (18/34: basic, 50/101/152: bottleneck); give model.stages for "
            "another layout")
