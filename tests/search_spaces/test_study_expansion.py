"""Expansion: trial_id stability, merging, constraints, ablations, names, search designs."""

from __future__ import annotations

import pytest
import torch

from models import count_macs
from models.config import ConfigError, ModelConfig
from search_spaces import (InfeasibleParams, StudyError, expand_study, load_study,
                           load_study_text, search_space, trial_from_params)
from search_spaces.expand import model_stats

torch.set_num_threads(1)


def trials_of(text: str, overrides=()):
    return expand_study(load_study_text(text, "t.yaml", overrides))


def ids(trials) -> set[str]:
    return {t.trial_id for t in trials}


def cells(trials) -> set[tuple]:
    m = [t.model for t in trials]
    return {(x.residual, x.depth, x.block, x.shortcut, x.width) for x in m}


# ---- trial_id stability ---------------------------------------------------------------

REFORMATTED = """\
# the same study, written differently: sections and keys reordered, block style,
# comments, quoting, 0.25 as 2.5e-1
design: "grid"
space:
  depth:            # listed before residual: a different expansion order
    - 8
    - 14
  residual:
    - no
    - yes
model:
  width: 2.5e-1
  family: 'cifar'
train:
  threads: 1
  epochs: 1
  recipe: cosine
data:
  augment: false
  val_size: 64
  train_size: 256
  dataset: fashion-mnist
name: small
"""


def test_trial_id_ignores_key_order_formatting_and_expansion_order(small_study):
    a, b = trials_of(small_study), trials_of(REFORMATTED)
    assert ids(a) == ids(b) and len(a) == 4
    assert [t.trial_id for t in a] != [t.trial_id for t in b]  # other order, same trials
    assert {t.name: t.trial_id for t in a} == {t.name: t.trial_id for t in b}


def test_trial_id_ignores_where_a_trial_runs_but_not_what_it_computes(small_study):
    base = ids(trials_of(small_study))
    assert ids(trials_of(small_study, ["resources.cpu=2", "train.threads=2",
                                       "name=renamed", "description=x"])) == base
    assert ids(trials_of(small_study, ["train.lr=0.05"])).isdisjoint(base)
    assert ids(trials_of(small_study, ["repeats=2"])) > base  # seed 0 kept, seed 1 added


def test_extending_a_study_keeps_the_ids_of_existing_cells(small_study):
    before = ids(trials_of(small_study))
    after = ids(trials_of(small_study, ["space.depth=[8, 14, 20]"]))
    assert before < after and len(after - before) == 2


# ---- merging --------------------------------------------------------------------------

def test_plain_nets_merge_across_shortcut_options(small_study):
    trials = trials_of(small_study, ["space.shortcut=[A, B, C]", "space.depth=[8]"])
    assert sorted(t.name for t in trials) == [
        "plain-8-A-w0.25-s0", "resnet-8-A-w0.25-s0", "resnet-8-B-w0.25-s0",
        "resnet-8-C-w0.25-s0"]
    assert all(t.model.shortcut == "A" for t in trials if not t.model.residual)


def test_equal_values_written_differently_merge(small_study):
    trials = trials_of(small_study.replace("width: 0.25", "depth: 8"),
                       ["space.depth=null", "space.width=[1, 1.0, 0.25]"])
    assert len(trials) == 4  # 2 residual x 2 distinct widths
    assert all(isinstance(t.model.width, float) for t in trials)


def test_meta_device_counts_match_the_models_package():
    for cfg in (ModelConfig(depth=56, residual=False, width=0.5, in_channels=1, image_size=28),
                ModelConfig(depth=29, block="bottleneck", shortcut="C"),
                ModelConfig(family="mlp", depth=5, in_channels=1, image_size=28)):
        assert model_stats(cfg).macs == count_macs(cfg)


def test_paper_parameter_counts_reach_the_plan():
    study = load_study("search_spaces/degradation.yaml")
    params = {t.name: study.model_stats(t.model).params for t in expand_study(study)}
    assert params["resnet-20-A-w1-s0"] == params["plain-20-A-w1-s0"] == 269_722  # 0.27M
    assert params["resnet-110-A-w1-s0"] == 1_727_962                             # 1.7M


# ---- constraints ----------------------------------------------------------------------

def test_skip_drops_exactly_the_matching_cells(small_study):
    rule = "constraints=[{when: {residual: false, depth: 14}, skip: true}]"
    trials = trials_of(small_study, [rule])
    assert cells(trials) == {(False, 8, "basic", "A", 0.25), (True, 8, "basic", "A", 0.25),
                             (True, 14, "basic", "A", 0.25)}


def test_when_lists_mean_any_of(small_study):
    rule = "constraints=[{when: {depth: [8, 14], residual: false}, skip: true}]"
    assert {t.model.residual for t in trials_of(small_study, [rule])} == {True}


def test_require_keeps_only_matching_cells_when_the_condition_holds(small_study):
    text = small_study.replace("residual: [false, true]", "block: [basic, bottleneck]") \
        .replace("[8, 14]", "[8, 11, 14, 20]")
    rules = ("constraints=[{when: {block: basic}, require: {depth: [8, 14, 20]}},"
             " {when: {block: bottleneck}, require: {depth: [11, 20]}}]")
    trials = trials_of(text, [rules])
    assert {(t.model.block, t.model.depth) for t in trials} == {
        ("basic", 8), ("basic", 14), ("basic", 20), ("bottleneck", 11), ("bottleneck", 20)}


def test_constraints_see_fixed_values_defaults_and_train_keys(small_study):
    fixed = "constraints=[{when: {family: cifar}, require: {depth: 8}}]"
    assert {t.model.depth for t in trials_of(small_study, [fixed])} == {8}
    default = "constraints=[{when: {shortcut: A, residual: true}, skip: true}]"  # A: default
    assert {t.model.residual for t in trials_of(small_study, [default])} == {False}
    train = ["space.train.lr=[0.1, 0.01]",
             "constraints=[{when: {train.lr: 0.01}, require: {depth: 14}}]"]
    assert {(t.train.lr, t.model.depth) for t in trials_of(small_study, train)} == {
        (0.1, 8), (0.1, 14), (0.01, 14)}


def test_constraints_judge_cells_as_written_before_normalisation(small_study):
    # "plain nets have no shortcut choice": written as a rule, the plain B/C cells go.
    rule = ["space.shortcut=[A, B]", "space.depth=[8]",
            "constraints=[{when: {residual: false}, require: {shortcut: A}}]"]
    trials = trials_of(small_study, rule)
    assert sorted(t.name for t in trials) == [
        "plain-8-A-w0.25-s0", "resnet-8-A-w0.25-s0", "resnet-8-B-w0.25-s0"]


def test_a_constraint_can_rescue_an_impossible_cell(small_study):
    text = small_study.replace("[8, 14]", "[8, 21]")
    with pytest.raises(StudyError):
        trials_of(text)
    trials = trials_of(text, ["constraints=[{when: {depth: 21}, skip: true}]"])
    assert {t.model.depth for t in trials} == {8}


# ---- ablation -------------------------------------------------------------------------

ABLATION = """\
name: abl
data: {dataset: fashion-mnist, train_size: 256, val_size: 64}
train: {recipe: cosine, epochs: 1}
model: {family: cifar, width: 0.25}
design: ablation
baseline: {depth: 14, residual: true, shortcut: A, train.lr: 0.1}
vary:
  shortcut: [A, B, C]
  residual: [false]
  depth: [8, 14]
  train.lr: [0.1, 0.05]
repeats: 2
"""


def test_ablation_runs_the_baseline_once_and_one_factor_at_a_time():
    trials = trials_of(ABLATION)
    seed0 = [t for t in trials if t.seed == 0]
    assert [t.name for t in seed0] == [
        "resnet-14-A-w0.25-lr0.1-s0",     # baseline (listed again under shortcut and
        "resnet-14-B-w0.25-lr0.1-s0",     # depth and train.lr: not repeated)
        "resnet-14-C-w0.25-lr0.1-s0",
        "plain-14-A-w0.25-lr0.1-s0",
        "resnet-8-A-w0.25-lr0.1-s0",
        "resnet-14-A-w0.25-lr0.05-s0"]
    assert len(trials) == 12 and {t.seed for t in trials} == {0, 1}


def test_explicit_seeds(small_study):
    trials = trials_of(small_study + "seeds: [3, 7]\n")
    assert {t.seed for t in trials} == {3, 7} and len(trials) == 8
    assert {t.name.rsplit("-", 1)[1] for t in trials} == {"s3", "s7"}


# ---- names ----------------------------------------------------------------------------

def test_names_are_readable_and_unique(small_study):
    trials = trials_of(small_study, ["space.train.batch_size=[64, 128]",
                                     "space.width=[0.25, 0.5]", "model.width=null"])
    names = [t.name for t in trials]
    assert "plain-8-A-w0.25-batch_size64-s0" in names
    assert "resnet-14-A-w0.5-batch_size128-s0" in names
    assert len(set(names)) == len(names) == 16


def test_colliding_names_get_a_trial_id_suffix(small_study):
    trials = trials_of(small_study, ["space.train.lr=[0.1, 0.1000001]", "space.depth=[8]",
                                     "space.residual=[true]"])
    assert len(trials) == 2
    assert {t.name for t in trials} == {f"resnet-8-A-w0.25-lr0.1-s0-{t.trial_id[:6]}"
                                        for t in trials}


# ---- search designs -------------------------------------------------------------------

def test_search_space_and_trials_from_params():
    study = load_study("search_spaces/search-optuna.yaml")
    space = search_space(study)
    assert space["depth"] == {"type": "choice", "values": [20, 56]}
    assert space["train.lr"] == {"type": "float", "low": 0.02, "high": 0.3, "step": None,
                                 "log": True}
    with pytest.raises(ConfigError, match="search_space"):
        expand_study(study)
    params = {"depth": 56, "block": "bottleneck", "width": 0.5, "shortcut": "B",
              "train.lr": 0.05}
    trial = trial_from_params(study, params, seed=3)
    assert (trial.model.depth, trial.model.block, trial.model.width, trial.model.shortcut,
            trial.train.lr, trial.seed) == (56, "bottleneck", 0.5, "B", 0.05, 3)
    assert trial.name == "resnet-56-bottleneck-B-w0.5-lr0.05-s3"
    assert trial.study == "search-optuna" and trial.train.epochs == 6
    assert trial_from_params(study, dict(reversed(params.items())), 3).trial_id == \
        trial.trial_id
    with pytest.raises(InfeasibleParams, match="9n\\+2"):
        trial_from_params(study, {**params, "depth": 32}, seed=0)
    with pytest.raises(ConfigError, match="expected exactly the space keys"):
        trial_from_params(study, {"depth": 20}, seed=0)


def test_search_constraints_reject_proposals():
    text = """\
name: s
model: {family: cifar, width: 0.25}
design: search
space:
  depth: {int: {low: 8, high: 20, step: 6}}
  train.lr: {float: {low: 0.01, high: 0.1, log: true}}
constraints:
  - {when: {depth: 20}, skip: true}
search: {num_samples: 4, scheduler: {median: {grace_period: 1}}}
"""
    study = load_study_text(text, "s.yaml")
    assert search_space(study)["depth"] == {"type": "int", "low": 8, "high": 20, "step": 6,
                                            "log": False}
    assert trial_from_params(study, {"depth": 14, "train.lr": 0.02}, 0).model.depth == 14
    with pytest.raises(InfeasibleParams, match="constraints\\[0\\]"):
        trial_from_params(study, {"depth": 20, "train.lr": 0.02}, 0)


def test_int_range_with_invalid_depths_is_refused_at_load():
    text = """\
name: s
model: {family: cifar}
design: search
space:
  depth: {int: {low: 8, high: 20}}
search: {num_samples: 4}
"""
    with pytest.raises(StudyError, match=r"space\.depth\.int: got 10 of 13 values"):
        load_study_text(text, "s.yaml")
