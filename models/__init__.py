"""ResNet family builder (torch only): cifar / imagenet / mlp networks, complexity, probes.

Public API::

    build_model(cfg) -> nn.Module        validate_model_config(cfg)
    count_params(model) -> int           count_macs(cfg) -> int
    layer_responses(model, inputs)       gradient_norms(model, inputs, targets)
    load_torchvision_state_dict(model, sd)

`models` never imports ray, mlflow or optuna (tests/test_layering.py).
"""

from models.build import build_model, count_params
from models.complexity import count_macs
from models.config import ModelConfig
from models.errors import ConfigError
from models.probes import gradient_norms, layer_responses
from models.torchvision_compat import load_torchvision_state_dict
from models.validation import validate_model_config

__all__ = ["ConfigError", "ModelConfig", "build_model", "count_macs", "count_params",
           "gradient_norms", "layer_responses", "load_torchvision_state_dict",
           "validate_model_config"]
