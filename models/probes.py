"""Probes measured at the end of a trial (paper Fig. 7 and the seed's gradient flow).

Both probes leave the model as they found it: every module's train/eval flag, BN running
statistics (all buffers) and every parameter's ``.grad``.

- `layer_responses`: std of each weighted layer's response, measured in **eval mode**
  under no_grad (the paper measures on the test set at inference), so BN uses its running
  statistics and updates nothing.
- `gradient_norms`: weight-gradient L2 norm per block from one cross-entropy
  forward/backward in **train mode** (the gradients training sees, BN on batch
  statistics); buffers are saved and restored, gradients are taken with
  ``torch.autograd.grad`` and never written to ``.grad``.

Pass the plain module (not a torch.compile wrapper or a CUDA-graph replay): the probes
use forward hooks and ``probe_units()``, which only an eager nn.Module honours.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def _preserved_state(model: nn.Module, train: bool) -> Iterator[None]:
    """Run the body in train/eval mode; restore modes and buffers afterwards."""
    modes = {module: module.training for module in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.train(train)
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, mode in modes.items():
            module.training = mode


def _response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module whose output is the response) in module order.

    Conv nets: each conv of the main path (stem and residual branches, not shortcut
    projections) paired with the BatchNorm that follows it; the response is the BN
    output, before addition and ReLU. Nets without convs (mlp): each Linear, whose
    output is the pre-activation.
    """
    named = list(model.named_modules())
    if not any(isinstance(module, nn.Conv2d) for _, module in named):
        return [(name, module) for name, module in named if isinstance(module, nn.Linear)]
    layers: list[tuple[str, nn.Module]] = []
    pending_conv: str | None = None
    for name, module in named:
        if "shortcut" in name.split("."):
            continue
        if isinstance(module, nn.Conv2d):
            pending_conv = name
        elif isinstance(module, nn.BatchNorm2d) and pending_conv is not None:
            layers.append((pending_conv, module))
            pending_conv = None
    return layers


def layer_responses(model: nn.Module, inputs: torch.Tensor) -> dict[str, float]:
    """{layer name: std of its response over the whole batch}, in network order.

    Conv nets: one entry per conv of the main path (depth - 1 of them: every weighted
    layer but the classifier), keyed by the conv's name, e.g. ``layer1.0.conv2``.
    MLP: one entry per Linear (2 x depth + 2). Measured in eval mode.
    """
    responses: dict[str, float] = {}
    handles = []
    for name, module in _response_layers(model):
        def record(_module, _inputs, output, name=name) -> None:
            responses[name] = float(output.float().std())
        handles.append(module.register_forward_hook(record))
    try:
        with _preserved_state(model, train=False), torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return responses


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if hasattr(model, "probe_units"):
        return model.probe_units()
    raise TypeError(f"{type(model).__name__} has no probe_units(); build it with "
                    "models.build_model")


def gradient_norms(model: nn.Module, inputs: torch.Tensor,
                   targets: torch.Tensor) -> dict[str, float]:
    """{block name: L2 norm of the cross-entropy gradient w.r.t. its weights}.

    Blocks in network order: stem (``conv1`` / ``input_proj``), every residual or plain
    block (``layer2.0``, ``blocks.3``, including any projection shortcut), classifier
    (``fc`` / ``output_proj``). Weights are conv and linear weight matrices (no BN
    parameters, no biases); a block's norm is sqrt(sum of squared entries) over all of
    them. Measured in train mode; the model's state and ``.grad`` are untouched.
    """
    units = [(name, [w for module in unit.modules() for w in _weights(module)])
             for name, unit in _units(model)]
    weights = [w for _, ws in units for w in ws]
    with _preserved_state(model, train=True), torch.enable_grad():
        loss = F.cross_entropy(model(inputs), targets)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
    squared = {id(w): (g.float().pow(2).sum() if g is not None else w.new_zeros(()))
               for w, g in zip(weights, grads)}
    return {name: float(sum(squared[id(w)] for w in ws) ** 0.5) for name, ws in units}


def _weights(module: nn.Module) -> list[torch.Tensor]:
    if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.requires_grad:
        return [module.weight]
    return []
