"""The pieces of the training loop: device, optimizer, the train step, evaluation.

The train step is a separate object with a small interface (`TrainStep`) so the loop does
not care how a step runs. `EagerStep` is plain PyTorch; a CUDA-graph step (forward,
backward and optimizer update captured once and replayed, lr kept in a device tensor)
implements the same interface in `workers/graph_step.py` and is picked by
`make_train_step` on CUDA when `train.cuda_graph` is on.

`train_step(...)` is the only place where a step's arithmetic is written: zero the
gradients, forward under autocast, cross-entropy (with optional label smoothing),
backward, optional gradient clipping, the optimizer update, and the count of wrong
predictions. `EagerStep` calls it on every batch; `workers.graph_step.GraphStep` calls it
a few times to warm up and once inside `torch.cuda.graph(...)`, and then replays what that
call recorded. So both paths compute the same thing by construction, and on the CPU
(where nothing is captured) the graph step's optimizer and learning-rate tensor can be
tested against the eager step.

Everything in `train_step` is capturable: no host synchronisation (no `.item()`, no
Python branch on a tensor value), autocast without its weight-cast cache (a cached cast
made during capture would be freed with the cache; PyTorch's CUDA-graph notes ask for
`cache_enabled=False`), and `clip_grad_norm_` without `error_if_nonfinite` (which would
read the norm on the host).

Memory layout (`uses_channels_last`): conv nets train channels_last on every device, the
model's weights (set by the trial) and each batch (converted by the steps and `evaluate`).
On CUDA it is what cuDNN's fast kernels want; on the CPU oneDNN's convolutions are faster
in it too (measured here: ResNet-56 width 0.5, 28x28, batch 128, one thread: 1.31x over
NCHW; bench/throughput.py measures the engine against an NCHW loop). bf16 autocast was
slower on these CPUs (0.82x) and `torch.compile` costs ~90 s per trial to compile, so
neither is a CPU default. The layout changes no value beyond float rounding order, and a
run is as deterministic as before: same seed, threads and device, same numbers.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.config import ConfigError
from workers.config import TrainConfig


class TrainStep(Protocol):
    """One optimizer step on one batch.

    static_batch: True when every batch must have exactly `train.batch_size` rows (a
                  captured graph has fixed shapes); the loop then drops the ragged last
                  batch of an epoch.
    optimizer:    the torch optimizer (its state is checkpointed).
    captured:     True once the step runs as a replayed CUDA graph (False for an eager
                  step, and for a graph step whose capture failed and fell back).
    """

    static_batch: bool
    optimizer: torch.optim.Optimizer
    captured: bool

    def set_lr(self, lr: float) -> None:
        """Use `lr` from the next call on (a graph step writes it into a device tensor)."""

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on (B, C, H, W) float images and (B,) labels; return (mean loss, number
        of wrong predictions) as 0-dim tensors on the device, without a host sync."""

    def close(self) -> None:
        """Release what the step holds on the device beyond the model and the optimizer's
        state (a graph and its memory pool); the trial calls it when it ends."""


def pick_device(name: str) -> torch.device:
    """'auto' -> the first CUDA GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: got {name!r}, but torch sees no CUDA device here; "
                          "use 'auto' or 'cpu'")
    return device


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """True where the model and its batches run channels_last: always on CUDA (as the
    graph step was written for), and on the CPU for a net with 2-d convolutions (an MLP
    gains nothing from it)."""
    return device.type == "cuda" or any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(B, C, H, W) images in the layout the model trains in (a no-op when already so)."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def autocast(device: torch.device, precision: str):
    """bf16 autocast for "bf16" (weights and the optimizer stay fp32), a no-op for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


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


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum / Nesterov and L2 weight decay on every parameter (as the paper)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                                nesterov=train.nesterov, weight_decay=train.weight_decay)
    optimizer.register_load_state_dict_post_hook(match_param_strides)
    return optimizer


@torch.no_grad()
def match_param_strides(optimizer: torch.optim.Optimizer) -> None:
    """`Optimizer.load_state_dict` post-hook: give every state tensor shaped like its
    parameter (SGD's momentum buffer) the parameter's strides.

    Loading casts the saved state to the parameter's device and dtype but keeps the saved
    strides, so a checkpoint written in NCHW (on the CPU before conv nets trained
    channels_last there) and resumed channels_last has momentum buffers laid out unlike
    their parameters, which CUDA's
    fused SGD refuses. Values are unchanged; only the layout is the parameter's.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            for key, value in list((state or {}).items()):
                if (isinstance(value, torch.Tensor) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_strided(param.shape, param.stride(),
                                                     dtype=value.dtype,
                                                     device=value.device).copy_(value)


class EagerStep:
    """The train step in plain eager PyTorch (the default, and always on the CPU)."""

    static_batch = False
    captured = False

    def __init__(self, model: nn.Module, train: TrainConfig, device: torch.device):
        self.forward = torch.compile(model) if train.compile else model
        self.optimizer = build_optimizer(model, train)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.precision = train.precision
        self.label_smoothing = train.label_smoothing
        self.grad_clip = train.grad_clip
        self.channels_last = uses_channels_last(model, device)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_layout(images, self.channels_last)
        # The same body as the CUDA-graph step captures (`train_step` above).
        return train_step(self.forward, self.optimizer, self.params, images, labels,
                          precision=self.precision, label_smoothing=self.label_smoothing,
                          grad_clip=self.grad_clip)

    def close(self) -> None:
        """Nothing beyond the model and optimizer to release (they go with the trial)."""


def make_train_step(model: nn.Module, train: TrainConfig, device: torch.device) -> TrainStep:
    """A CUDA-graph step where asked for and available, else `EagerStep`."""
    if device.type == "cuda" and train.cuda_graph:
        from workers.graph_step import GraphStep  # the GPU engine, imported only when used
        return GraphStep(model, train, device)
    return EagerStep(model, train, device)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, precision: str) -> tuple[float, float]:
    """(mean cross-entropy, error fraction) of `model` in eval mode over `batches`."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    channels_last = uses_channels_last(model, device)
    for images, labels in batches:
        images = to_layout(images, channels_last)
        with autocast(device, precision):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        wrong += (logits.argmax(dim=1) != labels).sum()
        count += labels.shape[0]
    model.train(was_training)
    if count == 0:
        return float("nan"), float("nan")
    return float(loss_sum) / count, int(wrong) / count
