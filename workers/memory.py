"""How much GPU memory one trial needs, and whether the trials packed on one GPU fit.

A study's `resources.gpu` fraction lets Ray start 1/gpu trials on the same GPU (0.25 ->
four). Each is its own process with its own CUDA context, model, optimizer, activations
and copy of the data set, so four ResNet-110s at batch 512 may not fit where four
ResNet-20s do. `estimate_trial_memory(trial)` adds up, in bytes:

- parameters, gradients and SGD momentum: 4 bytes each per parameter (all fp32; bf16
  autocast casts weights per step, counted in `workspace`);
- activations kept for the backward pass: the network runs once on the meta device (no
  memory, no compute) at `train.batch_size` and the trial's precision (bf16: every saved
  tensor 2 bytes per value, as under autocast), and a saved-tensors hook adds up every
  distinct tensor autograd keeps; plus twice the largest one for the gradients alive
  during the backward pass;
- evaluation: eval batches (1024 images) run outside the CUDA graph's private memory
  pool, so their largest activations (x3: input, output and one more alive) add on top;
- the data set held on the GPU as uint8 (train subset + validation + test) with int64
  labels; an image-folder data set (imagenet) streams from the host: 0;
- cuDNN workspaces (`cudnn_workspace`): with `cudnn.benchmark` on, cuDNN may pick
  algorithms (FFT, Winograd) whose scratch memory is a few times a convolution's
  activation. The captured step keeps one in the graph's private pool and eager
  evaluation (batch 1024) one in the allocator's cache: `CUDNN_WORKSPACE_FACTOR` times
  the largest training activation plus as much for evaluation, at least
  `CUDNN_WORKSPACE_MIN_BYTES` (cuBLAS and small algorithms);
- allowances, not seen by torch's allocator or not modelled: `CUDA_CONTEXT_BYTES` per
  process (the CUDA context with cuDNN and cuBLAS handles and their kernels) and
  `WORKSPACE_BYTES` (allocator rounding and fragmentation, bf16 weight casts, the float
  batch being augmented). bench/gpu.py prints measured peaks next to these estimates:
  `torch.cuda.max_memory_allocated` is to be compared with the total less these two.

`check_gpu_packing(trials, device_memory_bytes)` takes the largest estimates that can
share a GPU (1/gpu of them) and refuses with a ConfigError when they exceed the device,
or warns (`GpuMemoryWarning`) above `WARN_FRACTION` of it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

from models.config import ConfigError, ModelConfig
from workers.config import TrialConfig
from workers.data.base import EVAL_BATCH
from workers.data.datasets import DATASET_FACTS, split_sizes

GIB = 1024 ** 3
MIB = 1024 ** 2
# The CUDA context of one process, outside torch's allocator (torch.cuda.memory_allocated
# never sees it): the context itself, cuDNN and cuBLAS handles and the kernels loaded on
# first use. 0.6-1 GiB on current GPUs and CUDA 12 (more with cuDNN's and cuBLAS's large
# kernel libraries loaded); counted at the top of that range because every packed process
# pays it and an under-estimate runs a neighbour out of memory mid-study.
CUDA_CONTEXT_BYTES = 1 * GIB
CUDNN_WORKSPACE_FACTOR = 4             # workspace per convolution, x its largest activation
CUDNN_WORKSPACE_MIN_BYTES = 32 * MIB   # cuBLAS workspace + small cuDNN algorithms
WORKSPACE_BYTES = 256 * MIB            # allocator slack, bf16 weight casts, float batch
WARN_FRACTION = 0.85                   # packed estimate above this share of the device: warn


class GpuMemoryWarning(UserWarning):
    """Packed trials come close to the GPU's memory."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak GPU memory of one trial's process, in bytes, by what uses it."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    evaluation: int
    dataset: int
    cudnn_workspace: int = CUDNN_WORKSPACE_MIN_BYTES
    cuda_context: int = CUDA_CONTEXT_BYTES
    workspace: int = WORKSPACE_BYTES

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    @property
    def allocator(self) -> int:
        """The part torch's caching allocator sees (max_memory_allocated's counterpart):
        the total less the CUDA context and the slack allowance."""
        return self.total - self.cuda_context - self.workspace

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def estimate_trial_memory(trial: TrialConfig) -> MemoryEstimate:
    """The estimate for `trial` on a GPU (see the module docstring)."""
    train = trial.train
    params, saved, largest = _network_bytes(trial.model, train.batch_size, train.precision)
    _, _, largest_eval = _network_bytes(trial.model, EVAL_BATCH, train.precision,
                                        training=False)
    return MemoryEstimate(parameters=4 * params, gradients=4 * params,
                          optimizer=4 * params if train.momentum else 0,
                          activations=saved + 2 * largest,
                          evaluation=3 * largest_eval,
                          dataset=dataset_bytes(trial),
                          cudnn_workspace=max(CUDNN_WORKSPACE_MIN_BYTES,
                                              CUDNN_WORKSPACE_FACTOR * (largest + largest_eval)))


def dataset_bytes(trial: TrialConfig) -> int:
    """uint8 images + int64 labels of the splits a trial keeps on the device."""
    data, model = trial.data, trial.model
    facts = DATASET_FACTS.get(data.dataset)
    if facts is not None and not facts.on_device:
        return 0               # image folders stream from the host through a DataLoader
    sizes = split_sizes(data)
    per_image = model.in_channels * model.image_size ** 2 + 8
    return (sizes.train + sizes.val + sizes.test) * per_image


@lru_cache(maxsize=256)
def _network_bytes(model: ModelConfig, batch: int, precision: str,
                   training: bool = True) -> tuple[int, int, int]:
    """(parameter count, bytes autograd saves for backward, bytes of the largest saved or
    produced tensor) of one forward pass at `batch`, measured on the meta device."""
    from models import build_model, count_params

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.device("meta"):
        network = build_model(model).to(dtype)
    network.train(training)
    images = torch.empty(batch, model.in_channels, model.image_size, model.image_size,
                         device="meta", dtype=dtype)
    saved: dict[int, int] = {}
    keep: list[torch.Tensor] = []         # hold references so storage keys stay unique

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        keep.append(tensor)
        saved.setdefault(_storage_key(tensor), tensor.numel() * tensor.element_size())
        return tensor

    largest_output = 0

    def record(_module, _inputs, output) -> None:
        nonlocal largest_output
        if isinstance(output, torch.Tensor):
            largest_output = max(largest_output, output.numel() * output.element_size())

    hooks = [m.register_forward_hook(record) for m in network.modules()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.set_grad_enabled(training):
                logits = network(images)
                if training:
                    F.cross_entropy(logits.float(), torch.zeros(batch, dtype=torch.long,
                                                                device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    largest = max([largest_output, *saved.values()])
    return count_params(network), sum(saved.values()), largest


def _storage_key(tensor: torch.Tensor) -> int:
    """One key per storage (views of one tensor are saved once)."""
    try:
        return tensor.untyped_storage()._cdata
    except (RuntimeError, AttributeError):
        return id(tensor)


@dataclass
class PackingCheck:
    """The verdict on the trials that can share one GPU."""

    trials_per_gpu: int
    device_memory_bytes: int | None
    packed_bytes: int                     # the largest estimates that can share one GPU
    per_trial_bytes: dict[str, int] = field(default_factory=dict)   # name -> estimate
    verdict: str = "ok"                   # "ok" | "warn" | "refuse" | "unknown device"
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def trials_per_gpu(gpu: float) -> int:
    """Trials Ray runs at once on one GPU for a `resources.gpu` fraction (0: none)."""
    if gpu <= 0:
        return 0
    return max(1, math.floor(1 / gpu + 1e-9)) if gpu <= 1 else 1


def check_gpu_packing(trials: Sequence[TrialConfig], device_memory_bytes: int | None,
                      refuse: bool = True) -> PackingCheck:
    """Do the trials that Ray may pack on one GPU fit in its memory?

    Ray packs by the fractions only, so any 1/gpu trials of the study can meet on one GPU:
    the check adds up the largest estimates. Above the device's memory it raises
    ConfigError (or, with refuse=False, returns verdict "refuse"); above WARN_FRACTION of
    it, it warns with GpuMemoryWarning. Trials with resources.gpu = 0 are not on a GPU.
    `device_memory_bytes` None (no GPU known): estimates only, verdict "unknown device".
    """
    on_gpu = [t for t in trials if t.resources.gpu > 0]
    if not on_gpu:
        return PackingCheck(0, device_memory_bytes, 0, verdict="ok",
                            message="no trial asks for a GPU")
    per_gpu = min(trials_per_gpu(t.resources.gpu) for t in on_gpu)
    estimates = [estimate_trial_memory(t).total for t in on_gpu]
    per_trial = {t.name: total for t, total in zip(on_gpu, estimates)}
    ranked = sorted(estimates, reverse=True)
    packed = sum(ranked[:per_gpu])
    check = PackingCheck(per_gpu, device_memory_bytes, packed, per_trial)
    fraction = min(t.resources.gpu for t in on_gpu)
    summary = (f"{per_gpu} trial(s) per GPU (resources.gpu {fraction:g}); the largest "
               f"{min(per_gpu, len(ranked))} estimated at {packed / GIB:.2f} GiB together")
    if device_memory_bytes is None:
        check.verdict, check.message = "unknown device", summary + "; device memory unknown"
        return check
    fits = sum(1 for k in range(1, len(ranked) + 1) if sum(ranked[:k]) <= device_memory_bytes)
    device = f"the GPU's {device_memory_bytes / GIB:.1f} GiB"
    if packed > device_memory_bytes:
        check.verdict = "refuse"
        allowed = (f"at most {fits} per GPU: resources.gpu >= {1 / fits:.3g}" if fits
                   else "not even one trial fits: a smaller batch_size or a larger GPU")
        check.message = (f"resources.gpu: got {fraction:g}; {summary}, more than {device}; "
                         f"allowed: {allowed}")
        if refuse:
            raise ConfigError(check.message)
    elif packed > WARN_FRACTION * device_memory_bytes:
        check.verdict = "warn"
        check.message = (f"{summary}: over {WARN_FRACTION:.0%} of {device}; the estimate "
                         "is approximate, packed trials may run out of memory")
        warnings.warn(check.message, GpuMemoryWarning, stacklevel=2)
    else:
        check.message = f"{summary}, within {device}"
    return check
