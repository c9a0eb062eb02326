"""The GPU engine's train step: the whole step captured once in a CUDA graph and replayed.

CIFAR-scale ResNets are too small to keep a GPU busy from Python: an eager step launches
hundreds of tiny kernels and the GPU waits for the CPU. Capturing forward, backward and
the optimizer update in one CUDA graph turns a step into one launch (measured on an H200,
../shared/ANCHORS.md: ResNet-56 at batch 128, 5-7k images/s eager, 23.6k replayed).

How (PyTorch's "whole network capture" recipe, torch.cuda.graphs):
- Static shapes: the step owns an input and a label buffer of exactly `batch_size` rows;
  every call copies its batch into them (the loop drops an epoch's ragged last batch:
  `static_batch = True`). Loss and wrong-count are static outputs, valid until the next
  call (the loop accumulates them on the device and reads the sums once per epoch).
- The learning rate lives in a 0-dim fp32 tensor on the device, passed to
  `torch.optim.SGD(..., lr=<tensor>, fused=True)`; `set_lr` writes the schedule's value
  into it with `fill_`, so the schedule changes without re-capture. (A float lr is baked
  into the graph at capture; `foreach=True` with a tensor lr broke capture on torch 2.11.)
- Capture is lazy, at the first call, so a checkpoint loaded after construction (model and
  optimizer state) is what the graph sees. Before capture, `WARMUP_STEPS` steps run on a
  side stream on the first batch (cuDNN picks its algorithms, autograd and the optimizer
  allocate their state, `torch.compile` compiles); then the model, its BatchNorm running
  statistics and the optimizer's momentum are put back exactly as they were, so the
  warm-up leaves no trace and a trial on this path starts from the same weights as the
  eager path. A zero momentum buffer equals SGD's first step (buf = grad).
- BatchNorm in train mode updates its running statistics in place inside the graph, so
  every replay updates them; evaluation runs eagerly on the same module, outside the graph.
- If the warm-up or the capture fails (an op that cannot be captured, e.g. in a custom
  model or a compiled graph break that syncs), the step warns once and runs the same body
  eagerly; the stream that was current before is current again either way (a failing
  `torch.cuda.graph` leaves its capture stream current otherwise).
- Capture uses `capture_error_mode="thread_local"`: the image-folder DataLoader's
  pin-memory thread keeps calling CUDA while the main thread captures, which the default
  "global" mode treats as an error that invalidates the capture.
- An explicit `train.device: cuda:N` is honoured: warm-up, capture and every replay run
  under `torch.cuda.device(N)` on streams of that device.
- Memory: the graph's private pool (activations, gradients, cuDNN workspace of the
  captured step) is held until `close()`, which the trial calls when it ends. The step
  and its optimizer hold no reference cycle (the optimizer's hooks are closures over the
  lr tensor, not bound methods), so dropping the step frees the pool at once, without
  waiting for Python's cycle collector (with Ray's `reuse_actors` the next trial in the
  process would otherwise capture while the last one's pool is still reserved).
- Loading an optimizer state (a checkpoint, maybe written on the CPU in NCHW) gives the
  momentum buffers the parameters' strides (channels_last): CUDA's fused SGD needs them
  equal (`workers.engine.match_param_strides`).

On a CPU (or with `capture=False`) nothing is captured: the same body runs eagerly with
the same tensor lr and fused SGD, which is how the tests check this step against the
engine's `EagerStep`. `workers.engine.make_train_step` picks this class only on CUDA.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
import torch.nn as nn

from workers.config import TrainConfig
from workers.engine import match_param_strides, to_layout, train_step, uses_channels_last

WARMUP_STEPS = 3   # side-stream steps before capture (PyTorch's recipe uses a few)


class GraphCaptureWarning(RuntimeWarning):
    """The step could not be captured and runs eagerly instead (slower, same results)."""


def tensor_lr_sgd(model: nn.Module, train: TrainConfig, lr: torch.Tensor) -> torch.optim.SGD:
    """SGD with momentum / Nesterov / weight decay whose lr is the 0-dim tensor `lr`.

    Fused (one kernel for all parameters, reads lr on the device: capturable) where torch
    has a fused SGD for the device (CUDA, and the CPU since torch 2.4); elsewhere the
    single-tensor implementation, which also takes a tensor lr (read on the host).
    """
    settings = dict(lr=lr, momentum=train.momentum, nesterov=train.nesterov,
                    weight_decay=train.weight_decay)
    if _has_fused_sgd(lr.device):
        return torch.optim.SGD(model.parameters(), fused=True, **settings)
    return torch.optim.SGD(model.parameters(), foreach=False, **settings)


def _has_fused_sgd(device: torch.device) -> bool:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:   # private helper moved: CUDA has had fused SGD since torch 2.1
        return device.type == "cuda"
    return device.type in _get_fused_kernels_supported_devices()


class GraphStep:
    """`workers.engine.TrainStep` with the step captured in a CUDA graph (see module doc).

    model:   already on `device` (channels_last where `uses_channels_last`), in train mode.
    capture: None = capture on CUDA devices, run eagerly elsewhere.
    """

    static_batch = True

    def __init__(self, model: nn.Module, train: TrainConfig, device: torch.device,
                 capture: bool | None = None):
        self.model = model
        self.device = device
        self.batch_size = train.batch_size
        self.capture = device.type == "cuda" if capture is None else capture
        self.forward = torch.compile(model) if train.compile else model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.precision = train.precision
        self.label_smoothing = train.label_smoothing
        self.grad_clip = train.grad_clip
        self.channels_last = uses_channels_last(model, device)
        self.lr = torch.tensor(float(train.lr), dtype=torch.float32, device=device)
        self._lr_value = float(train.lr)
        self.optimizer = tensor_lr_sgd(model, train, self.lr)
        options = {k: self.optimizer.param_groups[0][k] for k in ("fused", "foreach")}
        # closures, not bound methods: the optimizer must not hold the step (see module doc)
        self.optimizer.register_load_state_dict_post_hook(restore_lr_tensor(self.lr, options))
        self.optimizer.register_load_state_dict_post_hook(match_param_strides)
        self.optimizer.register_state_dict_post_hook(_lr_as_float)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured = False
        self._static: dict[str, torch.Tensor] = {}

    # -- the learning rate ---------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        """Write `lr` into the device tensor the (captured) optimizer reads; a kernel
        launch only when the value changes."""
        if lr != self._lr_value:
            self.lr.fill_(lr)
            self._lr_value = lr

    # -- the step --------------------------------------------------------------------------
    def _body(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return train_step(self.forward, self.optimizer, self.params, images, labels,
                          precision=self.precision, label_smoothing=self.label_smoothing,
                          grad_clip=self.grad_clip)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[0] != self.batch_size or labels.shape[0] != self.batch_size:
            raise ValueError(f"GraphStep needs batches of exactly train.batch_size="
                             f"{self.batch_size} images (static shapes); got "
                             f"{images.shape[0]} images and {labels.shape[0]} labels. The loop "
                             "must drop the ragged last batch (static_batch is True).")
        if self.graph is None:
            images = to_layout(images, self.channels_last)
            if self.capture:
                self._capture(images, labels)             # sets self.graph on success
            if self.graph is None:                        # CPU, or capture failed: eagerly
                return self._body(images, labels)
        with torch.cuda.device(self.device):
            self._static["images"].copy_(images)      # also converts to channels_last
            self._static["labels"].copy_(labels)
            self.graph.replay()
        return self._static["loss"], self._static["wrong"]

    def close(self) -> None:
        """Release the graph and its private memory pool now (the trial calls this when
        it ends, also after an exception). The model and the optimizer state stay usable;
        a later call captures again."""
        if self.graph is not None:
            self.graph.reset()
        self.graph, self._static = None, {}
        self.optimizer.zero_grad(set_to_none=True)   # the grads live in the graph's pool
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                torch.cuda.empty_cache()             # back to the GPU for packed neighbours

    # -- capture ---------------------------------------------------------------------------
    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        static_images, static_labels = images.clone(), labels.clone()  # clone keeps layout
        saved = _snapshot(self.model, self.optimizer)
        graph = torch.cuda.CUDAGraph()
        try:
            with _on_device(self.device):
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_STEPS):
                        self._body(static_images, static_labels)
                torch.cuda.current_stream(self.device).wait_stream(side)
                _restore(self.model, self.optimizer, saved)
                self.optimizer.zero_grad(set_to_none=True)  # grads: allocated in the graph's pool
                with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                    loss, wrong = self._body(static_images, static_labels)
        except Exception as err:  # noqa: BLE001 - any warm-up/capture failure: run eagerly
            with torch.cuda.device(self.device):
                torch.cuda.synchronize(self.device)
            _restore(self.model, self.optimizer, saved)
            self.optimizer.zero_grad(set_to_none=True)
            self.capture = False
            warnings.warn(f"CUDA graph capture of the train step failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:300] if str(err) else ''}); this trial "
                          "runs the same step eagerly (slower, same results). Set "
                          "train.cuda_graph: false to silence this.", GraphCaptureWarning,
                          stacklevel=3)
            return
        self._static = {"images": static_images, "labels": static_labels,
                        "loss": loss, "wrong": wrong}
        self.graph, self.captured = graph, True
        del saved
        with torch.cuda.device(self.device):
            torch.cuda.empty_cache()   # return the snapshot's memory (packed trials share the GPU)


@contextlib.contextmanager
def _on_device(device: torch.device) -> Iterator[None]:
    """Make `device` current (an explicit cuda:N too) and leave the stream that was current
    on it current again on exit, also when `torch.cuda.graph` failed to restore its own
    (its `__exit__` skips that when `capture_end` raises)."""
    with torch.cuda.device(device):
        previous = torch.cuda.current_stream(device)
        try:
            yield
        finally:
            torch.cuda.set_stream(previous)


def restore_lr_tensor(lr: torch.Tensor, options: dict):
    """An `Optimizer.load_state_dict` post-hook: loading replaces the param groups with the
    saved ones (lr a float, maybe fused=False from an eager run); put the lr tensor `lr`
    and the group `options` back. A closure over exactly these, so the optimizer does not
    reference the step that owns it (no cycle; see the module docstring)."""
    def after_load(optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
            group.update(options)
    return after_load


def _lr_as_float(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """Checkpoints hold the lr as a float, as the eager step's do (it is rewritten every
    step from the schedule anyway), so either path resumes the other's checkpoint."""
    for group in state["param_groups"]:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
    return state


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Copies of everything a training step changes: parameters, buffers (BN running
    statistics and batch counters), and the optimizer's per-parameter tensors."""
    with torch.no_grad():
        return {"model": {name: t.detach().clone() for name, t in model.state_dict().items()},
                "optimizer": {p: {k: v.detach().clone() for k, v in state.items()
                                  if isinstance(v, torch.Tensor)}
                              for p, state in optimizer.state.items()}}


@torch.no_grad()
def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Put the snapshot back in place (same tensor objects: the graph records addresses).
    Optimizer tensors created after the snapshot (the first step's momentum buffers) are
    zeroed, which makes the next step behave as SGD's first."""
    for name, tensor in model.state_dict().items():
        tensor.copy_(saved["model"][name])
    for p, state in optimizer.state.items():
        before = saved["optimizer"].get(p, {})
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                if key in before:
                    value.copy_(before[key])
                else:
                    value.zero_()
