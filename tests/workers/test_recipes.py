"""Recipes, their validation, and the learning-rate schedule as a function of the iteration."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models.config import ConfigError, ModelConfig
from workers.config import TrainConfig, validate_train_config
from workers.recipes import RECIPES, ErrorWarmup, lr_at, resolve_recipe


def test_paper_cifar_has_the_papers_numbers():
    r = resolve_recipe("paper-cifar")
    assert (r.batch_size, r.lr, r.momentum, r.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert (r.iterations, r.epochs, r.schedule, r.milestones, r.gamma) == (64_000, None, "step",
                                                                           (32_000, 48_000), 0.1)
    assert r.warmup_until_error is None


def test_paper_cifar_warms_up_110_layers_and_deeper_only():
    assert resolve_recipe("paper-cifar", model=ModelConfig(depth=56)).warmup_lr is None
    deep = resolve_recipe("paper-cifar", model=ModelConfig(depth=110))
    assert (deep.warmup_lr, deep.warmup_until_error) == (0.01, 0.8)
    own = resolve_recipe("paper-cifar", {"warmup_lr": 0.02, "warmup_until_error": 0.7},
                         model=ModelConfig(depth=110))
    assert (own.warmup_lr, own.warmup_until_error, own.warmup_iters) == (0.02, 0.7, 0)


def test_paper_imagenet_and_cosine():
    r = resolve_recipe("paper-imagenet")
    assert (r.batch_size, r.lr, r.iterations, r.weight_decay, r.momentum) == (256, 0.1, 600_000, 1e-4, 0.9)
    assert r.milestones == (150_000, 300_000, 450_000)
    c = resolve_recipe("cosine", {"epochs": 5, "lr": 0.2, "warmup_iters": 100})
    assert (c.epochs, c.iterations, c.lr, c.warmup_iters, c.schedule) == (5, None, 0.2, 100, "cosine")
    assert set(RECIPES) == {"paper-cifar", "paper-imagenet", "cosine"}


def test_overriding_epochs_clears_iterations_and_back():
    short = resolve_recipe("paper-cifar", {"epochs": 3, "schedule": "cosine", "milestones": []})
    assert (short.epochs, short.iterations) == (3, None)
    it = resolve_recipe("cosine", {"iterations": 500})
    assert (it.epochs, it.iterations) == (None, 500)


def test_unknown_recipe_lists_the_recipes():
    with pytest.raises(ConfigError, match=r"train.recipe: got 'paper'; allowed: \['paper-cifar', "
                                          r"'paper-imagenet', 'cosine'\]"):
        resolve_recipe("paper")
    with pytest.raises(ConfigError, match="train.lerning_rate: unknown field"):
        resolve_recipe("cosine", {"lerning_rate": 0.1})


@pytest.mark.parametrize("changes,expected", [
    ({"epochs": 10, "iterations": 100}, "train.epochs/train.iterations"),
    ({"epochs": None, "iterations": None}, "set exactly one of them"),
    ({"epochs": None, "iterations": 1000, "schedule": "step", "milestones": (500, 1000)},
     "train.milestones: got (500, 1000); every milestone must be < train.iterations (1000)"),
    ({"schedule": "step", "milestones": (300, 200)}, "train.milestones"),
    ({"batch_size": 0}, "train.batch_size: got 0; allowed: a positive integer"),
    ({"schedule": "linear"}, "train.schedule: got 'linear'; allowed: ['step', 'cosine', 'constant']"),
    ({"precision": "fp16"}, "train.precision: got 'fp16'; allowed: ['fp32', 'bf16']"),
    ({"nesterov": True, "momentum": 0.0}, "train.nesterov"),
    ({"warmup_until_error": 0.8}, "needs train.warmup_lr"),
    ({"grad_clip": 0}, "train.grad_clip"),
    ({"device": "gpu"}, "train.device: got 'gpu'"),
])
def test_validation_names_the_field(changes, expected):
    with pytest.raises(ConfigError) as err:
        validate_train_config(TrainConfig(**{"epochs": 10, **changes}))
    assert expected in str(err.value)


def test_validation_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        validate_train_config(TrainConfig(batch_size=-1, lr=0, precision="fp8"))
    lines = str(err.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["train.batch_size", "train.lr", "train.precision"]


# -- the schedule ----------------------------------------------------------------------

def test_step_schedule_divides_at_the_milestones():
    paper = RECIPES["paper-cifar"]
    values = [lr_at(paper, i, 64_000) for i in (0, 31_999, 32_000, 47_999, 48_000, 63_999)]
    assert values == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_schedule_with_linear_warmup():
    train = TrainConfig(epochs=1, lr=0.2, schedule="cosine", warmup_iters=10)
    assert lr_at(train, 0, 110) == pytest.approx(0.02)
    assert lr_at(train, 4, 110) == pytest.approx(0.1)
    assert lr_at(train, 9, 110) == pytest.approx(0.2)
    assert lr_at(train, 10, 110) == pytest.approx(0.2)               # cosine starts at the peak
    assert lr_at(train, 60, 110) == pytest.approx(0.1)               # halfway
    assert lr_at(train, 109, 110) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    plain = TrainConfig(epochs=1, lr=0.1, schedule="cosine")
    assert lr_at(plain, 0, 100) == pytest.approx(0.1) and lr_at(plain, 50, 100) == pytest.approx(0.05)
    assert lr_at(TrainConfig(epochs=1, schedule="constant", lr=0.3), 999, 1000) == 0.3


def test_warmup_until_error_switches_once_the_error_is_low():
    train = resolve_recipe("paper-cifar", model=ModelConfig(depth=110))
    warmup = ErrorWarmup(train, check_every=4)
    lrs = []
    # 8 steps at 90% error, then 8 at 70%: the switch happens at the first check below 0.8
    for iteration, wrong in enumerate([90] * 8 + [70] * 8):
        lrs.append(lr_at(train, iteration, train.iterations, warmup.active))
        warmup.observe(iteration, torch.tensor(wrong), 100)
    assert lrs[:12] == [0.01] * 12 and lrs[12:] == [0.1] * 4
    assert warmup.ended_at == 12 and not warmup.active
    assert lr_at(train, 40_000, train.iterations, warmup.active) == pytest.approx(0.01)
    # the cap: never longer than warmup_iters steps, even if the error stays high
    assert lr_at(train, train.warmup_iters, train.iterations, warmup_active=True) == pytest.approx(0.1)
    restored = ErrorWarmup(train)
    restored.load_state_dict(warmup.state_dict())
    assert (restored.active, restored.ended_at) == (False, 12)


def test_warmup_until_error_ends_at_its_cap_even_if_the_error_stays_high():
    train = dataclasses.replace(resolve_recipe("paper-cifar", model=ModelConfig(depth=110)),
                                warmup_iters=6)
    warmup = ErrorWarmup(train, check_every=4)
    lrs = []
    for iteration in range(8):
        lrs.append(lr_at(train, iteration, train.iterations, warmup.active))
        warmup.observe(iteration, torch.tensor(90), 100)
    assert lrs == [0.01] * 6 + [0.1] * 2
    assert not warmup.active and warmup.ended_at == 6
