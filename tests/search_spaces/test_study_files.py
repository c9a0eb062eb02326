"""The shipped studies, the strict YAML loader, overrides and the JSON Schema."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

import search_spaces
from models.config import ModelConfig, settings
from search_spaces import StudyError, expand_study, load_study, search_space
from search_spaces.loading import load_yaml
from search_spaces.schema import (SHIPPED, DataSpec, ModelSpec, ResourcesSpec, TrainSpec,
                                  schema_text, study_schema)
from workers.config import DataConfig, Resources, TrainConfig

torch.set_num_threads(1)

# The shipped studies, here for `parametrize` (the folder of the package being tested).
SHIPPED_STUDIES = sorted(Path(search_spaces.__file__).parent.glob("*.yaml"))

EXPECTED_TRIALS = {"degradation": 9, "degradation-quick": 18, "shortcuts": 12,
                   "bottleneck": 8, "width": 16, "gradient-flow": 8, "onset": 8}


def test_every_expected_study_is_shipped():
    names = {p.stem for p in SHIPPED_STUDIES}
    assert set(EXPECTED_TRIALS) | {"search-optuna"} <= names


@pytest.mark.parametrize("path", SHIPPED_STUDIES, ids=lambda p: p.stem)
def test_shipped_study_loads_expands_and_plans(path, capsys, fixed_calibration, run_cli):
    study = load_study(path)
    assert study.name == path.stem
    first_line = path.read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=./study.schema.json"
    if study.design == "search":
        space = search_space(study)
        assert space and all(d["type"] in ("choice", "int", "float") for d in space.values())
    elif study.design == "onset":  # the plan lists the first step
        assert EXPECTED_TRIALS[study.name] == study.spec.onset.coarse * \
            study.spec.onset.seeds.start
    else:
        trials = expand_study(study)
        assert len(trials) == EXPECTED_TRIALS[study.name]
        assert len({t.trial_id for t in trials}) == len(trials)
        assert len({t.name for t in trials}) == len(trials)
    code, out, err = run_cli("plan", str(path), "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["totals"]["trials"] == (study.search.num_samples if study.search
                                        else EXPECTED_TRIALS[study.name])


@pytest.mark.parametrize("path", SHIPPED_STUDIES, ids=lambda p: p.stem)
def test_shipped_study_validates_against_the_json_schema(path):
    jsonschema.validate(yaml.safe_load(path.read_text()), study_schema())


def test_shipped_json_schema_is_up_to_date(capsys, tmp_path, run_cli):
    assert SHIPPED.read_text() == schema_text(), \
        "run: resweep schema --out search_spaces/study.schema.json"
    code, out, _ = run_cli("schema")
    assert code == 0 and json.loads(out) == json.loads(schema_text())
    code, _, _ = run_cli("schema", "--out", str(tmp_path / "s.json"))
    assert code == 0 and (tmp_path / "s.json").read_text() == schema_text()


def test_schema_out_to_a_missing_folder_exits_2(capsys, tmp_path, run_cli):
    code, _, err = run_cli("schema", "--out", str(tmp_path / "no" / "s.json"))
    assert code == 2 and "--out" in err and "Traceback" not in err


def test_json_schema_rejects_what_pydantic_rejects():
    bad = {"name": "x", "model": {"depth": 20, "colour": "red"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, study_schema())


@pytest.mark.parametrize("spec,config", [(ModelSpec, ModelConfig), (DataSpec, DataConfig),
                                         (TrainSpec, TrainConfig),
                                         (ResourcesSpec, Resources)])
def test_section_specs_are_derived_from_their_config_fields(spec, config):
    # Every declared field is settable from a study file, in the JSON Schema with the
    # dataclass's choices, bounds and description (integers > n as minimum n+1).
    assert list(spec.model_fields) == [f.name for f in dataclasses.fields(config)]
    defs = study_schema()["$defs"][spec.__name__]["properties"]
    for s in settings(config):
        prop = defs[s.name]
        assert prop["description"] == s.rule.doc
        typed = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
        assert len(typed) == 1, (s.name, prop)
        typed = typed[0].get("items", typed[0]) if s.kind is tuple else typed[0]
        if s.rule.choices is not None:
            assert typed["enum"] == list(s.rule.choices)
        integer = (s.item if s.kind is tuple else s.kind) is int
        expected = {"minimum": s.rule.ge, "exclusiveMinimum": s.rule.gt,
                    "maximum": s.rule.le, "exclusiveMaximum": s.rule.lt}
        if integer and s.rule.gt is not None:
            expected.update(minimum=s.rule.gt + 1, exclusiveMinimum=None)
        for key, value in expected.items():
            assert typed.get(key) == value, (s.name, key, typed)
        json_type = {bool: "boolean", int: "integer", float: "number", str: "string"}
        assert typed["type"] == json_type[s.item if s.kind is tuple else s.kind]
        # A study sets what it changes (train.recipe always has one); resources keep
        # their defaults.
        optional = spec is not ResourcesSpec and (spec, s.name) != (TrainSpec, "recipe")
        assert ("null" in [p.get("type") for p in prop.get("anyOf", [])]) == \
            (optional or s.nullable)


def test_degradation_quick_matches_the_anchor_setup():
    """The measured 2-core setup: plain and residual at 3 depths with 3 seeds per cell (so
    the report tests the onset and the fix over seeds); Fashion-MNIST, 8,192 images,
    width 0.5, batch 128, 4 epochs cosine from lr 0.1, one thread per trial, no
    augmentation."""
    trials = expand_study(load_study("search_spaces/degradation-quick.yaml"))
    assert sorted((t.model.residual, t.model.depth, t.seed) for t in trials) == \
        [(residual, depth, seed) for residual in (False, True) for depth in (8, 20, 44)
         for seed in (0, 1, 2)]
    for t in trials:
        assert (t.data.dataset, t.data.train_size, t.data.augment) == \
            ("fashion-mnist", 8_192, False)
        assert (t.model.width, t.model.in_channels, t.model.image_size) == (0.5, 1, 28)
        assert (t.train.batch_size, t.train.epochs, t.train.schedule, t.train.lr,
                t.train.threads) == (128, 4, "cosine", 0.1, 1)
        assert t.resources.cpu == 1 and t.resources.gpu == 0


def test_degradation_is_the_papers_figure_6():
    trials = expand_study(load_study("search_spaces/degradation.yaml"))
    cells = {(t.model.residual, t.model.depth) for t in trials}
    assert cells == {(r, d) for r in (False, True) for d in (20, 32, 44, 56)} | {(True, 110)}
    assert all(t.model.shortcut == "A" and t.data.dataset == "cifar10" and
               t.train.recipe == "paper-cifar" and t.train.iterations == 64_000
               for t in trials)
    warm = {t.model.depth: t.train.warmup_lr for t in trials if t.model.residual}
    assert warm[110] == 0.01 and warm[56] is None   # the paper's ResNet-110 warm-up


# ---- the YAML loader ------------------------------------------------------------------

def test_loader_reads_yaml12_floats_merge_keys_and_lines():
    text = "a: 1e-4\nb: &base {x: 1}\nc:\n  <<: *base\n  y: [2,\n      3]\n"
    data, locations, problems = load_yaml(text, "f.yaml")
    assert problems == []
    assert data == {"a": 1e-4, "b": {"x": 1}, "c": {"x": 1, "y": [2, 3]}}
    assert locations.where(("c", "y", 1)) == "f.yaml:6"
    assert locations.where(("c", "y")) == "f.yaml:5"
    assert locations.where(("nothing", "here")) == "f.yaml:1"


def test_loader_refuses_tags_and_duplicates_everywhere():
    text = "a: {b: 1, b: 2}\nc: [!!python/tuple [1, 2]]\nd: !!binary aGk=\n"
    _, _, problems = load_yaml(text, "f.yaml")
    messages = [str(p) for p in problems]
    assert any(m.startswith("f.yaml:1: a.b: got a duplicate key") for m in messages)
    assert any(m.startswith("f.yaml:2: c[0]: got the tag '!!python/tuple'") for m in messages)
    assert len(messages) == 2  # plain YAML tags such as !!binary are fine


# ---- overrides ------------------------------------------------------------------------

def test_overrides_apply_before_validation(tmp_path, study_file, small_study):
    path = study_file(small_study)
    study = load_study(path, ["train.epochs=3", "space.depth=[8]",
                              "space.train.lr=[0.1, 0.05]", "data.val_size=32"])
    trials = expand_study(study)
    assert len(trials) == 2 * 1 * 2
    assert {t.train.epochs for t in trials} == {3}
    assert {t.train.lr for t in trials} == {0.1, 0.05}
    assert {t.data.val_size for t in trials} == {32}
    assert {t.name for t in trials} >= {"plain-8-A-w0.25-lr0.1-s0", "resnet-8-A-w0.25-lr0.05-s0"}
    assert study.source_hash != load_study(path).source_hash
    assert study.overrides == ("train.epochs=3", "space.depth=[8]",
                               "space.train.lr=[0.1, 0.05]", "data.val_size=32")


def test_an_overridden_value_is_checked_like_a_written_one(tmp_path, study_file, small_study):
    path = study_file(small_study)
    with pytest.raises(StudyError) as err:
        load_study(path, ["space.depth=[8, 9]"])
    assert str(err.value) == (
        f"{path} (--set space.depth=[8, 9]): space.depth[1]: got 9; a basic cifar net "
        "needs depth = 6n+2 with n >= 1 (8, 14, 20, 26, ...) (e.g. the cell "
        "residual=false, depth=9)")


def test_search_spaces_imports_no_orchestration_stack():
    import subprocess
    import sys

    code = ("import sys, search_spaces, search_spaces.plan, search_spaces.cost\n"
            "print(','.join(sorted(n for n in sys.modules\n"
            "                      if n.split('.')[0] in ('ray', 'mlflow', 'optuna'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""
