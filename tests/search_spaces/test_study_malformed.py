"""Malformed study files: exit status 2, the key path (and line) in the message, no
traceback. One row per mistake; each row is a complete file (or a --set) of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# The small study of the conftest (its `small_study` fixture), needed here at import time.
SMALL_STUDY = (Path(__file__).parent / "data" / "small.yaml").read_text()

SEARCH = """\
name: s
data: {dataset: fashion-mnist, train_size: 256, val_size: 64}
train: {recipe: cosine, epochs: 1}
model: {family: cifar, width: 0.25}
design: search
space:
  depth: {choice: [8, 14]}
search: {num_samples: 2}
"""


ONSET = """\
name: o
data: {dataset: fashion-mnist, train_size: 256, val_size: 64}
train: {recipe: cosine, epochs: 1}
model: {family: cifar, width: 0.25}
design: onset
onset:
  depth: {low: 8, high: 26}
  budget: {trials: 12}
"""


def edit(old: str, new: str, base: str = SMALL_STUDY) -> str:
    assert old in base, old
    return base.replace(old, new)


# (id, file text, --set overrides, strings the message must contain)
CASES = [
    ("broken-yaml", "name: t\nspace: [1,\n", [], ["study.yaml:3:", "not valid YAML"]),
    ("tab-indent-yaml", "name: t\nmodel:\n\tdepth: 8\n", [], ["study.yaml:", "not valid YAML"]),
    ("empty-file", "# nothing\n", [], ["empty file"]),
    ("top-level-list", "- name: t\n", [], ["a study is a mapping"]),
    ("unknown-top-level-key", SMALL_STUDY + "colour: red\n", [],
     ["study.yaml:9:", "colour", "allowed keys"]),
    ("unknown-data-key", edit("augment: false", "augment: false, datset: x"), [],
     ["study.yaml:2:", "data.datset"]),
    ("unknown-train-key", edit("epochs: 1", "epochs: 1, lr_max: 1"), [],
     ["study.yaml:3:", "train.lr_max"]),
    ("unknown-model-key", edit("width: 0.25", "width: 0.25, dept: 8"), [],
     ["study.yaml:4:", "model.dept"]),
    ("unknown-resources-key", SMALL_STUDY + "resources: {cpu: 1, tpu: 1}\n", [],
     ["study.yaml:9:", "resources.tpu"]),
    ("unknown-constraint-key",
     SMALL_STUDY + "constraints:\n  - when: {depth: 8}\n    unless: {residual: true}\n", [],
     ["study.yaml:11:", "constraints[0].unless"]),
    ("unknown-search-key", SEARCH.replace("num_samples: 2", "num_samples: 2, sampler: tpe"),
     [], ["study.yaml:8:", "search.sampler"]),
    ("unknown-asha-key", SEARCH.replace(
        "num_samples: 2}", "num_samples: 2, scheduler: {asha: {max_epochs: 3}}}"), [],
     ["search.scheduler.asha.max_epochs"]),
    ("unknown-distribution-kind", SEARCH.replace("{choice: [8, 14]}", "{choise: [8, 14]}"),
     [], ["study.yaml:7:", "space.depth", "distribution"]),
    ("unknown-parameter-key", edit("depth: [8, 14]", "depth: [8, 14]\n  colour: [red]"), [],
     ["study.yaml:9:", "space.colour", "model field"]),
    ("unknown-train-parameter", edit("depth: [8, 14]", "depth: [8, 14]\n  train.lrr: [0.1]"),
     [], ["space.train.lrr"]),
    ("wrong-type-model-depth", edit("width: 0.25", "width: 0.25, depth: twenty"), [],
     ["study.yaml:4:", "model.depth", "'twenty'", "integer"]),
    ("wrong-type-residual", edit("[false, true]", "[false, maybe]"), [],
     ["study.yaml:7:", "space.residual[1]", "'maybe'"]),
    ("wrong-type-repeats", SMALL_STUDY + "repeats: 1.5\n", [], ["study.yaml:9:", "repeats"]),
    ("quoted-number", edit("epochs: 1", "epochs: '1'"), [], ["train.epochs", "'1'"]),
    ("negative-repeats", SMALL_STUDY + "repeats: -2\n", [],
     ["study.yaml:9:", "repeats", "-2", "greater than or equal to 1"]),
    ("empty-space-list", edit("depth: [8, 14]", "depth: []"), [],
     ["study.yaml:8:", "space.depth", "at least 1 item"]),
    ("empty-space", edit("space:\n  residual: [false, true]\n  depth: [8, 14]\n",
                         "space: {}\n"), [], ["space", "empty mapping"]),
    ("impossible-depth", edit("[8, 14]", "[8, 21]"), [],
     ["study.yaml:8:", "space.depth[1]", "got 21", "6n+2"]),
    ("bottleneck-not-9n+2", edit("residual: [false, true]", "block: [bottleneck]").replace(
        "[8, 14]", "[11, 14]"), [], ["space.depth[1]", "got 14", "9n+2"]),
    ("impossible-fixed-model", edit("model: {family: cifar, width: 0.25}",
                                    "model: {family: imagenet}").replace(
        "  depth: [8, 14]\n", ""), [], ["study.yaml:4:", "model.depth", "imagenet"]),
    ("vary-key-baseline-lacks", """\
name: t
model: {family: cifar, width: 0.25}
design: ablation
baseline: {depth: 8, residual: true}
vary:
  width: [0.5]
""", [], ["study.yaml:6:", "vary.width", "baseline lacks"]),
    ("ablation-without-baseline", """\
name: t
design: ablation
vary: {depth: [8]}
""", [], ["baseline", "design 'ablation' needs"]),
    ("duplicate-key", edit("width: 0.25}", "width: 0.25}\nmodel: {depth: 8}"), [],
     ["study.yaml:5:", "model", "duplicate key (first at line 4)"]),
    ("duplicate-nested-key", edit("depth: [8, 14]", "depth: [8, 14]\n  depth: [20]"), [],
     ["study.yaml:9:", "space.depth", "duplicate key"]),
    ("python-object-tag", SMALL_STUDY + "description: !!python/object/apply:os.system "
     "['echo pwned']\n", [], ["study.yaml:9:", "description", "tag"]),
    ("python-name-tag", edit("depth: [8, 14]", "depth: !!python/name:os.system"), [],
     ["study.yaml:8:", "space.depth", "tag"]),
    ("grid-over-cap", SMALL_STUDY + "max_trials: 3\n", [],
     ["study.yaml:6:", "space", "got 4 trials", "max_trials=3"]),
    ("hopeless-grid", edit("depth: [8, 14]", "depth: [8, 14]\n  train.lr: [" +
                           ", ".join(f"0.{i:03d}1" for i in range(100)) + "]\n  "
                           "train.weight_decay: [" + ", ".join(
                               f"0.{i:03d}" for i in range(100)) + "]"), [],
     ["space", "got 40000 trials", "2 x 2 x 100 x 100 cells", "max_trials=500"]),
    ("search-without-distributions", SEARCH.replace("space:\n  depth: {choice: [8, 14]}\n",
                                                    ""), [],
     ["space", "design 'search' needs", "distributions"]),
    ("search-without-settings", SEARCH.replace("search: {num_samples: 2}\n", ""), [],
     ["search", "design 'search' needs"]),
    ("distribution-in-grid", edit("depth: [8, 14]", "depth: {choice: [8, 14]}"), [],
     ["space.depth", "distributions are for design: search"]),
    ("empty-choice", SEARCH.replace("[8, 14]", "[]"), [], ["space.depth.choice"]),
    ("low-above-high", SEARCH + "  # \n", ["space.train.lr={float: {low: 0.3, high: 0.1}}"],
     ["space.train.lr.float", "low <= high"]),
    ("log-nonpositive-low", SEARCH, ["space.train.lr={float: {low: 0, high: 0.1, log: true}}"],
     ["space.train.lr.float.low", "log-scale"]),
    ("never-feasible-choice", SEARCH.replace("[8, 14]", "[8, 21]"), [],
     ["study.yaml:7:", "space.depth.choice[1]", "got 21"]),
    ("asha-grace-above-max", SEARCH.replace(
        "num_samples: 2}", "num_samples: 2, scheduler: {asha: {max_t: 2, grace_period: 3}}}"),
     [], ["search.scheduler.asha.grace_period"]),
    ("unknown-metric", SEARCH.replace("num_samples: 2}", "num_samples: 2, metric: acc}"), [],
     ["search.metric", "'acc'"]),
    ("unknown-recipe", edit("recipe: cosine", "recipe: fast"), [],
     ["study.yaml:3:", "train.recipe", "'fast'", "paper-cifar"]),
    ("recipe-rule", edit("epochs: 1", "epochs: 1, milestones: [10]"), [],
     ["train.milestones"]),
    ("epochs-and-iterations", edit("epochs: 1", "epochs: 1, iterations: 5"), [],
     ["study.yaml:3:", "train.epochs", "exactly one"]),
    ("model-does-not-fit-data", edit("width: 0.25", "width: 0.25, in_channels: 3"), [],
     ["study.yaml:4:", "model.in_channels", "1-channel images"]),
    ("unknown-dataset", edit("dataset: fashion-mnist", "dataset: mnist"), [],
     ["study.yaml:2:", "data.dataset", "'mnist'"]),
    ("gpu-share", SMALL_STUDY + "resources: {gpu: 1.5}\n", [], ["resources.gpu", "1.5"]),
    ("bad-name", edit("name: small", "name: my study"), [], ["study.yaml:1:", "name"]),
    ("missing-name", edit("name: small\n", ""), [], ["name", "required"]),
    ("unknown-design", edit("design: grid", "design: random"), [], ["design", "'random'"]),
    ("grid-with-baseline", SMALL_STUDY + "baseline: {depth: 8}\n", [],
     ["study.yaml:9:", "baseline", "belongs to design ablation"]),
    ("fixed-and-varied", edit("width: 0.25}", "width: 0.25, depth: 8}"), [],
     ["study.yaml:8:", "space.depth", "either fixed"]),
    ("constraint-both-actions", SMALL_STUDY +
     "constraints:\n  - {when: {depth: 8}, skip: true, require: {residual: true}}\n", [],
     ["study.yaml:10:", "constraints[0]", "both"]),
    ("constraint-unknown-key", SMALL_STUDY +
     "constraints:\n  - {when: {colour: red}, skip: true}\n", [],
     ["constraints[0].when.colour"]),
    ("constraint-wrong-type", SMALL_STUDY +
     "constraints:\n  - {when: {depth: deep}, skip: true}\n", [],
     ["constraints[0].when.depth", "'deep'"]),
    ("constraints-exclude-all", SMALL_STUDY +
     "constraints:\n  - {when: {family: cifar}, skip: true}\n", [],
     ["constraints", "exclude all 4 cells"]),
    ("baseline-excluded", """\
name: t
model: {family: cifar, width: 0.25}
design: ablation
baseline: {depth: 8, residual: true}
vary: {residual: [false]}
constraints:
  - {when: {residual: true}, skip: true}
""", [], ["baseline", "constraints[0] excludes"]),
    ("duplicate-seeds", SMALL_STUDY + "seeds: [1, 1]\n", [], ["seeds", "each seed once"]),
    ("bad-set-path", SMALL_STUDY, ["trian.epochs=3"],
     ["study.yaml (--set trian.epochs=3)", "trian", "allowed"]),
    ("bad-set-nested-path", SMALL_STUDY, ["train.epochz=3"], ["train.epochz"]),
    ("bad-set-syntax", SMALL_STUDY, ["train.epochs"], ["--set", "key.path=value"]),
    ("bad-set-value", SMALL_STUDY, ["train.epochs=abc"],
     ["(--set train.epochs=abc)", "train.epochs", "'abc'"]),
    ("bad-set-space-key", SMALL_STUDY, ["space.colour=[1]"], ["space.colour"]),
    ("unknown-onset-key", ONSET.replace("trials: 12}", "trials: 12, gpu_hour: 2}"), [],
     ["study.yaml:8:", "onset.budget.gpu_hour"]),
    ("onset-gpu-hours-on-a-cpu-study", ONSET.replace("trials: 12}", "gpu_hours: 2}"), [],
     ["study.yaml:8:", "onset.budget.gpu_hours: got 2 on a CPU study"]),
    ("onset-without-settings", ONSET.replace(ONSET[ONSET.index("onset:\n"):], ""), [],
     ["onset", "design 'onset' needs"]),
    ("onset-depth-not-of-the-block", ONSET.replace("high: 26", "high: 27"), [],
     ["study.yaml:7:", "onset.depth.high: got 27", "6n+2"]),
    ("onset-sets-depth", ONSET.replace("width: 0.25", "width: 0.25, depth: 20"), [],
     ["study.yaml:4:", "model.depth: got 20; design onset sets model.depth itself"]),
    ("onset-set-seeds", ONSET, ["onset.seeds={start: 3, max: 2}"],
     ["onset.seeds: got start 3 > max 2"]),
]


@pytest.mark.parametrize("case_id,text,overrides,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_study_exits_2_with_key_path(case_id, text, overrides, expected, tmp_path,
                                               capsys, fixed_calibration, run_cli, study_file):
    path = study_file(text)
    argv = ["plan", str(path)] + [a for o in overrides for a in ("--set", o)]
    code, out, err = run_cli(*argv)
    assert code == 2, (case_id, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("resweep plan: error: ") for line in lines), err
    for fragment in expected:
        assert fragment.replace("study.yaml", str(path)) in err, (fragment, err)


def test_every_top_level_key_of_a_study_has_a_malformed_case():
    """The rows cover the schema: each StudySpec field is the key path of some row's
    message (a key added to the schema needs a row), and no row repeats another's input."""
    from search_spaces.schema import StudySpec

    def names(fragment: str, key: str) -> bool:
        return fragment == key or fragment.startswith((f"{key}.", f"{key}[", f"{key}="))

    uncovered = [key for key in StudySpec.model_fields
                 if not any(names(f, key) for *_, expected in CASES for f in expected)]
    assert not uncovered, f"no malformed case names {uncovered}"
    assert len({case_id for case_id, *_ in CASES}) == len(CASES)
    inputs = [(text, tuple(overrides)) for _, text, overrides, _ in CASES]
    assert len(set(inputs)) == len(inputs), "two rows test the same input"


def test_all_problems_of_a_file_reported_at_once(tmp_path, capsys, fixed_calibration, run_cli,
                                                  study_file):
    text = """\
name: bad study
data: {dataset: cifar11, foo: 1}
train: {recipe: paper-cifarx, lr: -1}
model: {family: cifar, shortcut: D, depthx: 3}
design: grid
space:
  residual: [false, true]
  depth: [20, "x"]
  bogus: [1]
repeats: -1
"""
    path = study_file(text)
    code, _, err = run_cli("plan", str(path), "--set", "train.epochz=3")
    assert code == 2
    lines = [line.removeprefix("resweep plan: error: ") for line in err.strip().splitlines()]
    expected = ["name", "data.dataset", "data.foo", "train.lr", "train.recipe",
                "model.shortcut", "model.depthx", "space.depth[1]", "space.bogus",
                "repeats", "train.epochz"]
    for path_text in expected:
        assert any(f": {path_text}: " in line for line in lines), (path_text, lines)
    # One line per problem, in file order; each names file:line or the --set it came from
    assert len(lines) == len(expected)
    file_lines = [int(m.group(1)) for line in lines
                  if (m := re.match(rf"{re.escape(str(path))}:(\d+): ", line))]
    assert file_lines == sorted(file_lines) and len(file_lines) == len(expected) - 1


def test_missing_file_exits_2(tmp_path, capsys, run_cli):
    code, _, err = run_cli("plan", str(tmp_path / "nope.yaml"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err
