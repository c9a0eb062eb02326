"""The body of one training step, shared by the eager step and the CUDA-graph step.

`train_step(...)` is the only place where a step's arithmetic is written: zero the
gradients, forward under autocast, cross-entropy (with optional label smoothing),
backward, optional gradient clipping, the optimizer update, and the count of wrong
predictions. `workers.engine.EagerStep` calls it on every batch; `workers.graph_step.
GraphStep` calls it a few times to warm up and once inside `torch.cuda.graph(...)`, and
then replays what that call recorded. So both paths compute the same thing by
construction, and on the CPU (where nothing is captured) the graph step's optimizer and
learning-rate tensor can be tested against the eager step.

Everything here is capturable: no host synchronisation (no `.item()`, no Python branch on
a tensor value), autocast without its weight-cast cache (a cached cast made during capture
would be freed with the cache; PyTorch's CUDA-graph notes ask for `cache_enabled=False`),
and `clip_grad_norm_` without `error_if_nonfinite` (which would read the norm on the host).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def train_step(forward: Callable[[torch.Tensor], torch.Tensor],
               optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
               images: torch.Tensor, labels: torch.Tensor, *, precision: str,
               label_smoothing: float = 0.0,
               grad_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns (mean loss fp32, wrong predictions int64),
    both 0-dim tensors on the device, without a host sync.

    forward:   the model (or its `torch.compile`d wrapper), in train mode.
    images:    (B, C, H, W) float, already normalised and augmented; labels: (B,) int64.
    precision: "bf16" runs the forward under bf16 autocast (weights, gradients and the
               optimizer stay fp32); "fp32" runs it as is.
    """
    optimizer.zero_grad(set_to_none=True)   # before capture the grads are None already
    with torch.autocast(images.device.type, dtype=torch.bfloat16,
                        enabled=precision == "bf16", cache_enabled=False):
        logits = forward(images)                                        # (B, classes)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    wrong = (logits.detach().argmax(dim=1) != labels).sum()            # int64, 0-dim
    return loss.detach().float(), wrong
