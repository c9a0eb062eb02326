"""The GPU engine: the CUDA-graph step, its lr tensor, static batches, memory estimates
and the packing check.

Everything but the capture itself is tested on the CPU: `GraphStep(..., capture=False)`
runs the same step body with the same tensor lr and fused SGD, without recording a graph.
The tests at the end need a CUDA device and skip without one (bench/gpu.py measures the
rest on a GPU machine).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import workers.trial as trial_module
from models import build_model, count_params
from models.config import ConfigError, ModelConfig
from workers.config import DataConfig, Resources, TrainConfig, TrialConfig
from workers.engine import EagerStep, make_train_step
from workers.graph_step import GraphCaptureWarning, GraphStep, _restore, _snapshot
from workers.memory import (CUDA_CONTEXT_BYTES, GIB, GpuMemoryWarning, check_gpu_packing,
                            dataset_bytes, estimate_trial_memory, trials_per_gpu)
from workers.recipes import lr_at
from workers.trial import train_trial

torch.set_num_threads(1)
CPU = torch.device("cpu")
TINY = ModelConfig(depth=8, width=0.5, in_channels=1, image_size=16, num_classes=10)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: true graph capture cannot run on "
                                       "the CPU (run bench/gpu_run.sh on a GPU machine)")


def batches(count: int, batch: int = 16, seed: int = 1, size: int = 16, distinct: int = 4):
    """`count` batches cycling through `distinct` random ones (learnable by heart)."""
    gen = torch.Generator().manual_seed(seed)
    pool = [(torch.randn(batch, 1, size, size, generator=gen),
             torch.randint(0, 10, (batch,), generator=gen)) for _ in range(distinct)]
    return [pool[i % distinct] for i in range(count)]


def train_steps(step_class, train: TrainConfig, data, device=CPU, **kwargs):
    """Fresh seeded TINY net; one step per batch at the cosine schedule's lr."""
    torch.manual_seed(0)
    model = build_model(TINY).to(device)
    step = step_class(model, train, device, **kwargs)
    losses = []
    for i, (x, y) in enumerate(data):
        step.set_lr(lr_at(train, i, len(data)))
        loss, _ = step(x.to(device), y.to(device))
        losses.append(float(loss))
    return model, step, losses


def max_state_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((x.float() - y.float()).abs().max())
               for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# -- the step body and the lr tensor -----------------------------------------------------
@pytest.mark.parametrize("options", [
    {},
    {"nesterov": True, "label_smoothing": 0.1, "grad_clip": 0.5},
    {"precision": "bf16", "weight_decay": 5e-4},
], ids=["plain-sgd", "nesterov-smoothing-clip", "bf16"])
def test_graph_step_body_matches_the_engines_eager_step_on_cpu(options):
    train = TrainConfig(lr=0.1, batch_size=16, **options)
    data = batches(20)
    eager_model, _, eager_losses = train_steps(EagerStep, train, data)
    graph_model, step, graph_losses = train_steps(GraphStep, train, data, capture=False)
    assert step.graph is None and step.optimizer.param_groups[0]["fused"] is True
    # same seed, same batches, same schedule: same weights and BN statistics after 20 steps
    assert max_state_difference(eager_model, graph_model) < 1e-5
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    assert sum(eager_losses[-4:]) < sum(eager_losses[:4])   # it trained


def test_lr_lives_in_one_device_tensor_that_follows_the_schedule():
    train = TrainConfig(lr=0.1, batch_size=16, schedule="step", milestones=(3, 6),
                        epochs=None, iterations=9, weight_decay=0.0, momentum=0.0)
    torch.manual_seed(0)
    model = build_model(TINY)
    step = GraphStep(model, train, CPU, capture=False)
    group = step.optimizer.param_groups[0]
    assert group["lr"] is step.lr and step.lr.dim() == 0
    seen = []
    for i, (x, y) in enumerate(batches(9)):
        step.set_lr(lr_at(train, i, 9))
        seen.append(float(step.lr))
        before = [p.detach().clone() for p in model.parameters()]
        step(x, y)
        moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before))
        grads = max(float(p.grad.abs().max()) for p in model.parameters())
        # plain SGD: the largest move is exactly lr x the largest gradient entry
        assert moved == pytest.approx(seen[-1] * grads, rel=1e-3)
    assert seen == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 3)
    assert group["lr"] is step.lr                     # never replaced by a float


def test_lr_zero_in_the_tensor_leaves_the_weights_alone():
    torch.manual_seed(0)
    model = build_model(TINY)
    step = GraphStep(model, TrainConfig(batch_size=16), CPU, capture=False)
    step.set_lr(0.0)
    weights = [p.detach().clone() for p in model.parameters()]
    for x, y in batches(3):
        step(x, y)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))


def test_optimizer_checkpoints_cross_between_eager_and_graph_steps():
    train = TrainConfig(lr=0.1, batch_size=16)
    data = batches(4)
    _, eager, _ = train_steps(EagerStep, train, data)
    _, graph, _ = train_steps(GraphStep, train, data, capture=False)
    saved = graph.optimizer.state_dict()
    assert isinstance(saved["param_groups"][0]["lr"], float)   # as the eager step saves it
    graph.optimizer.load_state_dict(eager.optimizer.state_dict())
    group = graph.optimizer.param_groups[0]
    assert group["lr"] is graph.lr and group["fused"] is True   # the lr tensor survives
    eager.optimizer.load_state_dict(saved)
    eager.set_lr(0.05)
    assert eager.optimizer.param_groups[0]["lr"] == 0.05


# -- static batches ------------------------------------------------------------------------
def test_graph_step_refuses_a_ragged_batch():
    step = GraphStep(build_model(TINY), TrainConfig(batch_size=16), CPU, capture=False)
    x, y = batches(1, batch=10)[0]
    with pytest.raises(ValueError, match="exactly train.batch_size=16"):
        step(x, y)


def synthetic_trial(**train) -> TrialConfig:
    return TrialConfig(name="static", model=TINY, seed=3,
                       data=DataConfig(dataset="synthetic", train_size=300, val_size=50,
                                       test_size=64),
                       train=TrainConfig(epochs=2, batch_size=64, lr=0.05, threads=1,
                                         probes=False, **train))


def test_the_loop_drops_the_ragged_batch_only_for_a_static_step(monkeypatch):
    eager = train_trial(synthetic_trial())
    monkeypatch.setattr(trial_module, "make_train_step",
                        lambda model, train, device: GraphStep(model, train, device,
                                                               capture=False))
    static = train_trial(synthetic_trial())
    # 300 images, batch 64: 5 steps (the last one 44 images) vs 4 full ones
    assert [h["iteration"] for h in eager.history] == [5, 10]
    assert [h["iteration"] for h in static.history] == [4, 8]
    assert static.status == "finished" and 0 <= static.final["test_error"] <= 1


def test_cpu_trials_never_take_the_graph_path():
    model = build_model(TINY)
    assert isinstance(make_train_step(model, TrainConfig(cuda_graph=True), CPU), EagerStep)
    on = train_trial(synthetic_trial(cuda_graph=True))
    off = train_trial(synthetic_trial(cuda_graph=False))
    drop = {"images_per_s", "elapsed_s"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in on.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in off.history]


# -- the capture's warm-up leaves no trace -------------------------------------------------
def test_warmup_snapshot_and_restore_make_the_next_step_a_first_step():
    train = TrainConfig(lr=0.1, batch_size=16, nesterov=True)
    (x, y), = batches(1)
    torch.manual_seed(0)
    reference = build_model(TINY)
    fresh = GraphStep(reference, train, CPU, capture=False)
    fresh(x, y)                                           # one step from scratch

    torch.manual_seed(0)
    model = build_model(TINY)
    step = GraphStep(model, train, CPU, capture=False)
    saved = _snapshot(model, step.optimizer)
    for _ in range(3):                                    # what the side stream does
        step(x, y)
    _restore(model, step.optimizer, saved)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  saved["model"].values()))
    assert all(float(s["momentum_buffer"].abs().max()) == 0 for s in step.optimizer.state.values())
    step.optimizer.zero_grad(set_to_none=True)
    step(x, y)
    assert max_state_difference(reference, model) == 0.0


# -- memory estimates and packing --------------------------------------------------------
def gpu_trial(depth=20, residual=True, batch=128, precision="bf16", gpu=0.25, name=None,
              dataset="cifar10", **data) -> TrialConfig:
    model = ModelConfig(depth=depth, residual=residual, in_channels=3, image_size=32)
    return TrialConfig(name=name or f"{'resnet' if residual else 'plain'}-{depth}", model=model,
                       data=DataConfig(dataset=dataset, **data),
                       train=TrainConfig(batch_size=batch, precision=precision),
                       resources=Resources(gpu=gpu))


def saved_bytes_of_a_real_forward(trial: TrialConfig) -> int:
    """What autograd keeps for backward in a real fp32 CPU forward (storage-deduplicated)."""
    torch.manual_seed(0)
    model = build_model(trial.model)
    images = torch.randn(trial.train.batch_size, 3, 32, 32)
    sizes: dict[int, int] = {}
    keep = []

    def pack(t):
        keep.append(t)
        sizes.setdefault(t.untyped_storage()._cdata, t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.nn.functional.cross_entropy(model(images), torch.zeros(images.shape[0], dtype=torch.long))
    return sum(sizes.values())


def test_memory_estimate_parts_add_up_and_scale():
    trial = gpu_trial(depth=20, batch=32, precision="fp32")
    estimate = estimate_trial_memory(trial)
    params = count_params(build_model(trial.model))
    assert estimate.parameters == estimate.gradients == estimate.optimizer == 4 * params
    # the meta-device estimate is what a real forward saves, plus 2x the largest tensor
    real = saved_bytes_of_a_real_forward(trial)
    largest = 32 * 16 * 32 * 32 * 4          # a (32, 16, 32, 32) fp32 stage-1 activation
    assert estimate.activations == real + 2 * largest
    # activations scale with the batch (weights and BN statistics saved too: not exactly);
    # bf16 halves them
    double = estimate_trial_memory(gpu_trial(depth=20, batch=64, precision="fp32"))
    half = estimate_trial_memory(gpu_trial(depth=20, batch=32, precision="bf16"))
    assert double.activations == pytest.approx(2 * estimate.activations, rel=0.02)
    assert half.activations == pytest.approx(estimate.activations / 2, rel=0.02)
    deeper = estimate_trial_memory(gpu_trial(depth=56, batch=32, precision="fp32"))
    assert deeper.activations > 2.5 * estimate.activations
    assert estimate.total == sum(v for k, v in estimate.to_dict().items() if k != "total")
    assert estimate.cuda_context == CUDA_CONTEXT_BYTES


def test_dataset_bytes_count_the_resident_uint8_splits():
    # cifar10: 45k train + 5k val + 10k test images of 3x32x32 bytes + 8-byte labels
    assert dataset_bytes(gpu_trial(val_size=5000)) == 60_000 * (3 * 32 * 32 + 8)
    small = gpu_trial(dataset="fashion-mnist", train_size=10240, val_size=1000, test_size=2000)
    assert dataset_bytes(small) == (11240 + 2000) * (3 * 32 * 32 + 8)
    assert dataset_bytes(gpu_trial(dataset="imagenet")) == 0     # streamed from the host


def test_packing_check_ok_warn_and_refuse():
    trials = [gpu_trial(depth=d, gpu=0.25) for d in (20, 56, 110)] + [gpu_trial(56, False)]
    each = {t.name: estimate_trial_memory(t).total for t in trials}
    assert trials_per_gpu(0.25) == 4 and trials_per_gpu(0.3) == 3 and trials_per_gpu(1) == 1
    ok = check_gpu_packing(trials, 80 * GIB)
    assert (ok.verdict, ok.trials_per_gpu, ok.packed_bytes) == ("ok", 4, sum(each.values()))
    assert ok.per_trial_bytes == each
    # three per GPU: only the three largest can meet
    three = check_gpu_packing([dataclasses.replace(t, resources=Resources(gpu=0.3))
                               for t in trials], 80 * GIB)
    assert three.packed_bytes == sum(sorted(each.values())[1:])
    tight = int(sum(each.values()) / 0.9)
    with pytest.warns(GpuMemoryWarning, match="over 85%"):
        assert check_gpu_packing(trials, tight).verdict == "warn"
    too_small = sum(each.values()) - 1
    with pytest.raises(ConfigError, match=r"resources.gpu: got 0.25; .* allowed: at most 3 "
                                          r"per GPU: resources.gpu >= 0.333"):
        check_gpu_packing(trials, too_small)
    assert check_gpu_packing(trials, too_small, refuse=False).verdict == "refuse"
    assert check_gpu_packing(trials, None).verdict == "unknown device"
    cpu_only = [dataclasses.replace(t, resources=Resources(gpu=0)) for t in trials]
    assert check_gpu_packing(cpu_only, 1).trials_per_gpu == 0


# -- on a CUDA device ----------------------------------------------------------------------
@needs_cuda
def test_cuda_trials_take_the_graph_path():
    cuda = torch.device("cuda")
    model = build_model(TINY).to(cuda)
    assert isinstance(make_train_step(model, TrainConfig(), cuda), GraphStep)
    assert isinstance(make_train_step(model, TrainConfig(cuda_graph=False), cuda), EagerStep)


@needs_cuda
@pytest.mark.parametrize("options", [{}, {"nesterov": True, "label_smoothing": 0.1,
                                          "grad_clip": 0.5}], ids=["sgd", "smoothing-clip"])
def test_captured_step_matches_eager_on_cuda(options):
    cuda = torch.device("cuda")
    train = TrainConfig(lr=0.1, batch_size=16, **options)
    data = batches(12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphCaptureWarning)    # capture must succeed
        graph_model, step, graph_losses = train_steps(GraphStep, train, data, device=cuda)
    assert step.graph is not None
    eager_model, _, eager_losses = train_steps(EagerStep, train, data, device=cuda)
    assert graph_losses == pytest.approx(eager_losses, rel=1e-3, abs=1e-4)
    assert max_state_difference(eager_model, graph_model) < 1e-3   # incl. BN statistics
    bn = next(m for m in graph_model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 12             # every replay updates BN


@needs_cuda
def test_lr_change_reaches_the_captured_graph():
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(TINY).to(cuda)
    step = GraphStep(model, TrainConfig(batch_size=16), cuda)
    (x, y), = batches(1)
    x, y = x.to(cuda), y.to(cuda)
    step(x, y)
    assert step.graph is not None
    moves = []
    for lr in (0.1, 0.0, 0.01):
        step.set_lr(lr)
        before = [p.detach().clone() for p in model.parameters()]
        step(x, y)
        moves.append(max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before)))
    assert moves[0] > 0 and moves[1] == 0 and 0 < moves[2] < moves[0]


def test_plan_shows_gpu_memory_and_the_packing_verdict():
    from search_spaces import load_study
    from search_spaces.plan import format_table, plan_study

    study = load_study("search_spaces/degradation.yaml")
    fits = plan_study(study, cpus=4, gpus=1, gpu_memory_bytes=80 * GIB)
    rows = {r["name"]: r["est_gpu_memory_bytes"] for r in fits["trials"]}
    assert len(rows) == 9 and rows["resnet-110-A-w1-s0"] > rows["resnet-56-A-w1-s0"] > \
        rows["resnet-20-A-w1-s0"] > CUDA_CONTEXT_BYTES
    assert rows["plain-56-A-w1-s0"] == rows["resnet-56-A-w1-s0"]   # same tensors saved
    memory = fits["gpu_memory"]
    assert (memory["verdict"], memory["trials_per_gpu"]) == ("ok", 4)
    assert memory["packed_bytes"] == sum(sorted(rows.values())[-4:])
    assert "GPU memory (ok): 4 trial(s) per GPU" in format_table(fits)
    small = plan_study(study, cpus=4, gpus=1, gpu_memory_bytes=3 * GIB)
    assert small["gpu_memory"]["verdict"] == "refuse"
    assert "GPU memory (DOES NOT FIT): resources.gpu: got 0.25" in format_table(small)
