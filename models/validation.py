"""`validate_model_config(cfg)`: reject impossible architectures before anything runs.

Every message names the field (``model.depth``), the value received and what is allowed.
Each field's own rule (type, choices, bounds) is declared on `ModelConfig`; this module
adds the architecture rules, read from the table in models/architectures.py that the
builders use too. Study expansion calls this (through build_model on the meta device)
for every trial.
"""

from __future__ import annotations

from models.architectures import IMAGENET_LAYOUTS, STAGE_CHANNELS, cifar_depth_step
from models.config import ConfigError, ModelConfig, field_problems


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ConfigError for the first invalid field of `cfg`; return None if valid."""
    problems = field_problems(cfg, "model")
    if problems:
        raise ConfigError(problems[0])
    if cfg.family in STAGE_CHANNELS:
        base = STAGE_CHANNELS[cfg.family][0]  # narrowest stage before the multiplier
        narrowest = int(round(base * cfg.width))
        if narrowest < 1:
            raise ConfigError(
                f"model.width: got {cfg.width!r}; the narrowest {cfg.family} stage would "
                f"have {narrowest} channels; allowed: width >= {0.5 / base:g}")
    if cfg.family != "imagenet" and cfg.stages is not None:
        raise ConfigError(f"model.stages: got {list(cfg.stages)}; only the imagenet family "
                          "takes explicit stages (leave it null)")
    {"cifar": _check_cifar, "imagenet": _check_imagenet, "mlp": lambda c: None}[
        cfg.family](cfg)


def _check_cifar(cfg: ModelConfig) -> None:
    step = cifar_depth_step(cfg.block)  # 6 (basic) or 9 (bottleneck)
    if cfg.depth < step + 2 or (cfg.depth - 2) % step:
        examples = ", ".join(str(step * n + 2) for n in range(1, 5))
        raise ConfigError(
            f"model.depth: got {cfg.depth}; a {cfg.block} cifar net needs depth = "
            f"{step}n+2 with n >= 1 ({examples}, ...)")


def _check_imagenet(cfg: ModelConfig) -> None:
    num_stages = len(STAGE_CHANNELS["imagenet"])
    if cfg.stages is not None:
        if len(cfg.stages) != num_stages:
            raise ConfigError(f"model.stages: got {list(cfg.stages)}; allowed: four "
                              "integers >= 1 (blocks per stage, e.g. [3, 4, 6, 3])")
        return
    if cfg.depth not in IMAGENET_LAYOUTS:
        raise ConfigError(
            f"model.depth: got {cfg.depth}; an imagenet net needs depth in "
            f"{sorted(IMAGENET_LAYOUTS)} (or explicit model.stages)")
    needed = IMAGENET_LAYOUTS[cfg.depth][0]
    if cfg.block != needed:
        raise ConfigError(
            f"model.block: got {cfg.block!r}; imagenet depth {cfg.depth} uses {needed!r} "
            "blocks (18/34: basic, 50/101/152: bottleneck); give model.stages for "
            "another layout")
