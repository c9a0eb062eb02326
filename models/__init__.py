"""ResNet family builder (torch only): cifar / imagenet / mlp networks, complexity, probes.

Public API::

    build_model(cfg) -> nn.Module        validate_model_config(cfg)
    model_stats(cfg) -> ModelStats       (params and MACs in closed form, torch-free)
    count_params(model) -> int           count_macs(cfg) -> int   (counted on meta)
    measured_model_stats(cfg)            (model_stats by a meta-device build: the reference)
    layer_responses(model, inputs)       gradient_norms(model, inputs, targets)
    load_torchvision_state_dict(model, sd)

`models` never imports ray, mlflow or optuna (tests/test_layering.py). The exports are
resolved lazily (PEP 562) so that `from models.config import ConfigError` - done by every
CLI command, also for `resweep --help` - does not pay torch's ~4 s import.
"""

import importlib

_EXPORTS = {
    "ConfigError": "models.config", "ModelConfig": "models.config",
    "validate_model_config": "models.config",
    "build_model": "models.networks", "count_params": "models.networks",
    "load_torchvision_state_dict": "models.networks",
    "count_macs": "models.complexity", "model_stats": "models.complexity",
    "ModelStats": "models.complexity", "measured_model_stats": "models.complexity",
    "gradient_norms": "models.probes", "layer_responses": "models.probes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
