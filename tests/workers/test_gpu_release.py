"""Issue 16, part 1: the GPU path's memory release, checkpoint layout, capture settings and
the benchmark's honesty, tested on the CPU.

On the CPU `GraphStep(..., capture=False)` is the real class with the real optimizer and
hooks, so the reference cycle and the momentum-buffer strides (channels_last works on the
CPU) are tested here. What needs CUDA itself (a failed capture restoring the current
stream, `cuda:N`, capture with the DataLoader's pin-memory thread, the graph pool given
back) is in the tests marked `needs_cuda` at the end, which skip without a GPU.
"""

from __future__ import annotations

import gc
import io
import weakref

import pytest
import torch

import workers.trial as trial_module
from models import build_model
from models.config import ModelConfig
from workers.config import DataConfig, Resources, TrainConfig, TrialConfig
from workers.engine import EagerStep, build_optimizer, match_param_strides
from workers.graph_step import GraphCaptureWarning, GraphStep, restore_lr_tensor
from workers.memory import (CUDA_CONTEXT_BYTES, CUDNN_WORKSPACE_FACTOR,
                            CUDNN_WORKSPACE_MIN_BYTES, GIB, _network_bytes,
                            estimate_trial_memory)
from workers.data.base import EVAL_BATCH
from workers.trial import train_trial

torch.set_num_threads(1)
CPU = torch.device("cpu")
TINY = ModelConfig(depth=8, width=0.5, in_channels=3, image_size=16, num_classes=10)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (bench/gpu_run.sh on a GPU machine)")


def batches(count: int, batch: int = 16, seed: int = 1, distinct: int = 4):
    gen = torch.Generator().manual_seed(seed)
    pool = [(torch.randn(batch, 3, 16, 16, generator=gen),
             torch.randint(0, 10, (batch,), generator=gen)) for _ in range(distinct)]
    return [pool[i % distinct] for i in range(count)]


class gc_off:
    """Python's cycle collector disabled inside: what is freed, is freed by refcounting.

    First, one throwaway step: torch's first optimizer imports torch._dynamo, and that
    import leaves a short-lived frame cycle (torch.fx's `wrap` keeps its own frame) holding
    the whole stack of the moment, the caller's frame included. The cycle collector frees
    it at its next pass; it is torch's, once per process, and not what is tested here."""

    def __enter__(self):
        self.was_enabled = gc.isenabled()
        warm = GraphStep(build_model(TINY), TrainConfig(batch_size=4), CPU, capture=False)
        warm(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)))
        del warm
        gc.collect()                      # start clean: nothing pending from other tests
        gc.disable()

    def __exit__(self, *exc):
        if self.was_enabled:
            gc.enable()


# -- 1. no reference cycle: a dropped step is freed at once ------------------------------
def test_a_dropped_graph_step_is_freed_without_the_cycle_collector():
    torch.manual_seed(0)
    model = build_model(TINY)
    train = TrainConfig(lr=0.1, batch_size=16, nesterov=True)
    with gc_off():
        step = GraphStep(model, train, CPU, capture=False)
        for x, y in batches(2):
            step(x, y)
        step.optimizer.load_state_dict(step.optimizer.state_dict())   # the hooks ran
        assert step.optimizer.param_groups[0]["lr"] is step.lr
        step_ref, optimizer_ref = weakref.ref(step), weakref.ref(step.optimizer)
        buffer_ref = weakref.ref(next(iter(step.optimizer.state.values()))["momentum_buffer"])
        del step
        assert step_ref() is None, "GraphStep kept alive by a reference cycle"
        assert optimizer_ref() is None and buffer_ref() is None   # its momentum memory too


def test_the_lr_hook_is_a_closure_that_puts_the_tensor_and_options_back():
    model = torch.nn.Linear(3, 2)
    lr = torch.tensor(0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, foreach=False)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()
    hook = restore_lr_tensor(lr, {"foreach": False, "fused": None})
    assert not hasattr(hook, "__self__")                  # not a bound method of a step
    optimizer.register_load_state_dict_post_hook(hook)
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["lr"] is lr and optimizer.param_groups[0]["foreach"] is False


def graph_trial() -> TrialConfig:
    return TrialConfig(name="release", model=TINY, seed=3,
                       data=DataConfig(dataset="synthetic", train_size=64, val_size=0,
                                       test_size=32),
                       train=TrainConfig(epochs=1, batch_size=32, lr=0.05, threads=1,
                                         probes=False), resources=Resources(cpu=1))


def test_a_finished_trial_closes_its_step_and_leaves_nothing_behind(monkeypatch):
    made = []

    def graph_step(model, train, device):
        step = GraphStep(model, train, device, capture=False)
        made.extend([weakref.ref(step), weakref.ref(model)])
        return step

    monkeypatch.setattr(trial_module, "make_train_step", graph_step)
    closed = []
    original_close = GraphStep.close
    monkeypatch.setattr(GraphStep, "close", lambda self: (closed.append(True),
                                                          original_close(self))[1])
    with gc_off():
        result = train_trial(graph_trial())
        assert closed == [True]                              # released explicitly at the end
        assert made and all(ref() is None for ref in made)   # freed by refcounting alone
    assert (result.step_class, result.captured) == ("GraphStep", False)   # CPU: no capture
    monkeypatch.undo()
    plain = train_trial(graph_trial())
    assert (plain.step_class, plain.captured) == ("EagerStep", False)


def test_a_trial_that_raises_still_closes_its_step(monkeypatch):
    closed = []

    class Failing(GraphStep):
        def __call__(self, images, labels):
            raise RuntimeError("boom")

        def close(self):
            closed.append(True)
            super().close()

    monkeypatch.setattr(trial_module, "make_train_step",
                        lambda model, train, device: Failing(model, train, device, capture=False))
    with pytest.raises(RuntimeError, match="boom"):
        train_trial(graph_trial())
    assert closed == [True]


def test_close_drops_the_gradients_and_the_step_still_trains():
    torch.manual_seed(0)
    model = build_model(TINY)
    step = GraphStep(model, TrainConfig(batch_size=16), CPU, capture=False)
    (x, y), = batches(1)
    step(x, y)
    assert all(p.grad is not None for p in step.params)
    step.close()
    assert step.graph is None and all(p.grad is None for p in step.params)
    assert torch.isfinite(step(x, y)[0])


# -- 3. a checkpoint's momentum buffers take the parameters' strides ----------------------
def nchw_checkpoint(train: TrainConfig) -> tuple[dict, dict]:
    """(model, optimizer) state of an NCHW model after 3 eager CPU steps, through a file."""
    torch.manual_seed(0)
    model = build_model(TINY)
    step = EagerStep(model, train, CPU)
    for x, y in batches(3):
        step(x, y)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": step.optimizer.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, map_location="cpu", weights_only=True)
    return state["model"], state["optimizer"]


def channels_last_model(model_state: dict) -> torch.nn.Module:
    model = build_model(TINY).to(memory_format=torch.channels_last)
    model.load_state_dict(model_state)
    return model


@pytest.mark.parametrize("kind", ["graph", "eager"])
def test_loaded_momentum_buffers_take_the_channels_last_strides(kind):
    train = TrainConfig(lr=0.1, batch_size=16)
    model_state, optimizer_state = nchw_checkpoint(train)
    saved = {i: s["momentum_buffer"] for i, s in optimizer_state["state"].items()}
    # what torch alone does: the saved NCHW strides survive loading into channels_last
    plain = channels_last_model(model_state)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    plain_optimizer.load_state_dict(optimizer_state)
    assert any(s["momentum_buffer"].stride() != p.stride()
               for p, s in plain_optimizer.state.items())
    model = channels_last_model(model_state)
    step = GraphStep(model, train, CPU, capture=False) if kind == "graph" else \
        EagerStep(model, train, CPU)
    step.optimizer.load_state_dict(optimizer_state)
    params = list(model.parameters())
    assert len(step.optimizer.state) == len(params)
    for index, p in enumerate(params):
        buffer = step.optimizer.state[p]["momentum_buffer"]
        assert buffer.stride() == p.stride() and buffer.dtype == p.dtype
        assert torch.equal(buffer, saved[index])                  # same values
    if kind == "graph":
        assert step.optimizer.param_groups[0]["lr"] is step.lr
    x, y = batches(1)[0]
    assert torch.isfinite(step(x, y)[0])


def test_match_param_strides_leaves_matching_state_alone():
    model = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, TrainConfig())
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    before = {p: s["momentum_buffer"] for p, s in optimizer.state.items()}
    match_param_strides(optimizer)
    assert all(optimizer.state[p]["momentum_buffer"] is b for p, b in before.items())


def test_a_cpu_checkpoint_resumes_through_the_trial_into_a_channels_last_graph_step(
        monkeypatch, tmp_path):
    """The trial's own resume path with a channels_last model (as on CUDA): the strides
    are matched and training continues to the end."""
    trial = TrialConfig(name="resume", model=TINY, seed=3,
                        data=DataConfig(dataset="synthetic", train_size=64, val_size=0,
                                        test_size=32),
                        train=TrainConfig(epochs=2, batch_size=32, lr=0.05, threads=1,
                                          probes=False))

    class Stop(Exception):
        pass

    def stop_after_first(metrics, checkpoint):
        raise Stop

    with pytest.raises(Stop):       # epoch 1 written by an NCHW eager CPU trial
        train_trial(trial, report=stop_after_first, checkpoint_dir=str(tmp_path))
    strides = []
    original = match_param_strides

    def spy(optimizer):
        original(optimizer)
        strides.append(all(s["momentum_buffer"].stride() == p.stride()
                           for p, s in optimizer.state.items()))

    monkeypatch.setattr("workers.graph_step.match_param_strides", spy)
    monkeypatch.setattr(trial_module, "make_train_step",
                        lambda model, train, device: GraphStep(
                            model.to(memory_format=torch.channels_last), train, device,
                            capture=False))
    resumed = train_trial(trial, checkpoint_dir=str(tmp_path))
    assert strides == [True]
    assert resumed.status == "finished" and [h["epoch"] for h in resumed.history] == [1, 2]


# -- 5. the memory estimate counts the CUDA context and cuDNN's workspace ------------------
def test_memory_estimate_counts_the_cuda_context_and_the_cudnn_workspace():
    assert 0.6 * GIB <= CUDA_CONTEXT_BYTES <= 1 * GIB
    trial = TrialConfig(name="r20", model=ModelConfig(depth=20, in_channels=3, image_size=32),
                        data=DataConfig(dataset="cifar10"),
                        train=TrainConfig(batch_size=128, precision="bf16"),
                        resources=Resources(gpu=0.25))
    estimate = estimate_trial_memory(trial)
    _, _, largest = _network_bytes(trial.model, 128, "bf16")
    _, _, largest_eval = _network_bytes(trial.model, EVAL_BATCH, "bf16", training=False)
    assert largest == 128 * 16 * 32 * 32 * 2                  # a stage-1 bf16 activation
    assert estimate.cudnn_workspace == max(CUDNN_WORKSPACE_MIN_BYTES,
                                           CUDNN_WORKSPACE_FACTOR * (largest + largest_eval))
    assert estimate.cuda_context == CUDA_CONTEXT_BYTES
    # the allocator's share: everything torch's allocator sees (workspace included)
    assert estimate.allocator == estimate.total - estimate.cuda_context - estimate.workspace
    assert estimate.allocator > estimate.cudnn_workspace + estimate.activations
    # four packed ResNet-20s at batch 128: a few GiB, far from an 80 GiB GPU
    assert 4 * GIB < 4 * estimate.total < 12 * GIB


# -- 5. the benchmark -------------------------------------------------------------------
def test_packed_children_get_one_thread_each():
    from pathlib import Path

    from bench.gpu_packing import child_command, child_env

    command = child_command(Path("t.json"), Path("o.json"), smoke=False)
    assert command[command.index("--threads") + 1] == "1" and "--device" not in command
    assert child_command(Path("t.json"), Path("o.json"), smoke=True)[-2:] == ["--device", "cpu"]
    env = child_env()
    assert env["OMP_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "1"


def test_capture_checks_run_the_real_configuration_on_the_cpu():
    """bench/gpu_checks.py on the CPU (tiny sizes): every check reports whether it ran
    captured (here: never), and the checks that need no capture agree."""
    import argparse

    from bench.gpu import SMOKE, Bench
    from bench.gpu_checks import capture_checks

    bench = Bench(argparse.Namespace(cpu_smoke=True, out="unused.json", budget_s=60,
                                     reference="", fmnist=""))
    bench.sizes = SMOKE
    out = capture_checks(bench)
    assert out["configuration"]["channels"] == 3 and out["configuration"]["precision"] == "bf16"
    assert out["configuration"]["cudnn_benchmark"] is True
    for name in ("sgd", "nesterov_smoothing_clip", "lr", "resume_from_cpu_checkpoint",
                 "evaluate_between_replays"):
        assert out[name]["captured"] is False and out[name]["step_class"] == "GraphStep"
    assert out["resume_after_capture"]["captured"] is False
    assert out["sgd"]["bn_counter_ok"] and out["lr"]["lr_zero_leaves_weights"]
    assert out["resume_after_capture"]["max_weight_difference"] == 0.0
    assert out["resume_from_cpu_checkpoint"]["momentum_strides_match_parameters"]
    assert out["evaluate_between_replays"]["static_loss_kept"]
    assert out["evaluate_between_replays"]["max_weight_difference"] == 0.0


# -- on a CUDA device (part 2) --------------------------------------------------------------
@needs_cuda
def test_a_failed_capture_falls_back_and_leaves_the_current_stream():
    cuda = torch.device("cuda")

    class Syncs(torch.nn.Module):            # .item() inside the step cannot be captured
        def __init__(self):
            super().__init__()
            self.net = build_model(TINY)

        def forward(self, x):
            return self.net(x) * (1.0 + 0.0 * float(x.sum().item()))

    model = Syncs().to(cuda).to(memory_format=torch.channels_last)
    step = GraphStep(model, TrainConfig(batch_size=16), cuda)
    before = torch.cuda.current_stream(cuda)
    x, y = batches(1)[0]
    with pytest.warns(GraphCaptureWarning):
        loss, _ = step(x.to(cuda), y.to(cuda))
    assert torch.cuda.current_stream(cuda) == before
    assert not step.captured and torch.isfinite(loss)
    assert torch.isfinite(step(x.to(cuda), y.to(cuda))[0])        # eager from now on


@needs_cuda
def test_a_cpu_checkpoint_captures_on_the_gpu_without_fallback():
    import warnings

    cuda = torch.device("cuda")
    train = TrainConfig(lr=0.1, batch_size=16, precision="bf16")
    model_state, optimizer_state = nchw_checkpoint(train)
    model = build_model(TINY).to(cuda).to(memory_format=torch.channels_last)
    model.load_state_dict(model_state)
    step = GraphStep(model, train, cuda)
    step.optimizer.load_state_dict(optimizer_state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphCaptureWarning)
        for x, y in batches(3):
            step(x.to(cuda), y.to(cuda))
    assert step.captured


@needs_cuda
def test_closing_a_captured_step_gives_its_pool_back():
    cuda = torch.device("cuda")
    model = build_model(TINY).to(cuda).to(memory_format=torch.channels_last)
    step = GraphStep(model, TrainConfig(batch_size=16), cuda)
    for x, y in batches(2):
        step(x.to(cuda), y.to(cuda))
    assert step.captured
    held = torch.cuda.memory_reserved(cuda)
    step.close()
    assert torch.cuda.memory_reserved(cuda) < held
    with gc_off():
        ref = weakref.ref(step)
        del step
        assert ref() is None


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_an_explicit_second_gpu_captures_and_replays_there():
    second = torch.device("cuda", 1)
    model = build_model(TINY).to(second).to(memory_format=torch.channels_last)
    step = GraphStep(model, TrainConfig(batch_size=16), second)
    for x, y in batches(3):
        loss, _ = step(x.to(second), y.to(second))
    assert step.captured and loss.device == second and torch.cuda.current_device() == 0
