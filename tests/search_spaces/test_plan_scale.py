"""Planning at cluster scale (issue 13): behaviour, not speed (bench/scale.py times it).

- `resweep plan --json` / `run --dry-run` of a CPU study import neither torch nor MLflow;
- `TrialConfig.trial_id` is computed once, and handed on by `replace` only where it
  cannot change; its value is the canonical JSON's hash, as before;
- `plain_dict` (the fast `to_dict`) equals every config class's `to_dict`;
- the grid cap is arithmetic: `repeats: 1000000000` is refused, naming max_trials,
  without listing a seed; the exact count (merged cells x seeds) is what max_trials caps.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.config import ModelConfig
from search_spaces import StudyError, expand_study, load_study, load_study_text
from workers.config import DataConfig, Resources, TrainConfig, TrialConfig, plain_dict

REPO = Path(__file__).resolve().parents[2]

GRID = """\
name: scale-small
data: {dataset: fashion-mnist, train_size: 256, val_size: 64}
train: {recipe: cosine, epochs: 1}
model: {family: cifar}
design: grid
space:
  depth: [8, 14]
  width: [0.25, 0.5]
  residual: [true, false]
  shortcut: [A, B, C]
repeats: 3
"""


def _reference_trial_id(trial: TrialConfig) -> str:
    """The definition of trial_id, spelled out from the configs' own `to_dict`."""
    train = {k: v for k, v in trial.train.to_dict().items()
             if k not in ("device", "threads", "eval_every")}
    content = {"model": trial.model.to_dict(), "data": trial.data.to_dict(),
               "train": train, "seed": trial.seed}
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---- plan without torch ---------------------------------------------------------------

def _cli_modules(tmp_path: Path, *argv: str) -> list[str]:
    cache = tmp_path / "cache"
    if not cache.exists():
        cache.mkdir()
        entry = {"device": "cpu", "macs_per_s": 1e9, "images_per_s": 100.0,
                 "measured": "fixed-for-tests"}
        calibration = {f"cpu/threads={n}": {**entry, "threads": n} for n in (1, 2, 4, 8)}
        (cache / "calibration.json").write_text(json.dumps(calibration))
    code = ("import sys\nfrom orchestrator.cli import main\n"
            f"status = main({list(argv)!r})\n"
            "print(status, sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'mlflow', 'ray', 'optuna'}), file=sys.stderr)\n")
    env = {"PYTHONPATH": str(REPO), "RESWEEP_CACHE_DIR": str(cache), "CI": "true",
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.strip().splitlines()[-1].split(" ", 1)


def test_plan_json_and_dry_run_import_neither_torch_nor_mlflow(tmp_path):
    study = tmp_path / "grid.yaml"
    study.write_text(GRID)
    # The first plan on a machine asks torch once for its default thread count and
    # records it next to the calibration; from then on planning needs no torch at all.
    _cli_modules(tmp_path, "plan", str(study), "--json")
    assert _cli_modules(tmp_path, "plan", str(study), "--json") == ["0", "[]"]
    assert _cli_modules(tmp_path, "run", str(study), "--dry-run") == ["0", "[]"]
    cache = json.loads((tmp_path / "cache" / "calibration.json").read_text())
    assert [k for k in cache if k.startswith("torch_default_threads/")] != []


def test_plan_json_is_the_plan_with_one_trial_per_line(capsys, tmp_path, monkeypatch):
    from search_spaces.plan import format_json, plan_study

    monkeypatch.setenv("RESWEEP_CACHE_DIR", str(tmp_path))
    (tmp_path / "calibration.json").write_text(json.dumps({"cpu/threads=1": {
        "device": "cpu", "macs_per_s": 1e9, "images_per_s": 1.0, "measured": "x",
        "threads": 1}}))
    study = load_study_text(GRID.replace("epochs: 1}", "epochs: 1, threads: 1}"))
    plan = plan_study(study)
    text = format_json(plan)
    assert json.loads(text) == plan
    lines = text.splitlines()
    start = lines.index('  "trials": [')
    assert [json.loads(line.strip().rstrip(",")) for line in
            lines[start + 1:start + 1 + len(plan["trials"])]] == plan["trials"]


# ---- trial_id and plain_dict ----------------------------------------------------------

def test_plain_dict_equals_every_config_classes_to_dict():
    configs = [ModelConfig(), ModelConfig(family="imagenet", depth=18, stages=[1, 2, 2, 1]),
               ModelConfig(family="mlp", width=2), DataConfig(),
               DataConfig(dataset="cifar10", train_size=10, root="/x"),
               TrainConfig(), TrainConfig(schedule="step", milestones=[5, 9]),
               Resources(cpu=2, gpu=0.25)]
    for config in configs:
        assert plain_dict(config) == config.to_dict()
        assert list(plain_dict(config)) == list(config.to_dict())   # same key order
    trial = TrialConfig(name="t", model=configs[1], train=configs[6], seed=4)
    assert json.dumps(trial.to_dict()) == json.dumps(
        {"name": "t", "study": "adhoc", "seed": 4, "trial_id": trial.trial_id,
         "model": configs[1].to_dict(), "data": DataConfig().to_dict(),
         "train": configs[6].to_dict(), "resources": Resources().to_dict()})


def test_trial_id_is_computed_once_and_equals_its_definition(monkeypatch):
    trial = TrialConfig(name="t", model=ModelConfig(depth=56, width=0.5), seed=3)
    first = trial.trial_id
    assert first == _reference_trial_id(trial)
    calls = []
    monkeypatch.setattr("workers.config.hashlib.sha256",
                        lambda data: calls.append(data) or hashlib.sha256(data))
    assert [trial.trial_id for _ in range(5)] == [first] * 5
    assert calls == []                                    # cached on the instance
    assert "trial_id" not in trial.to_dict()["model"] and trial.to_dict()["trial_id"] == first
    assert trial == TrialConfig(name="t", model=ModelConfig(depth=56, width=0.5), seed=3)


@pytest.mark.parametrize("changes", [
    dict(name="other"), dict(resources=Resources(cpu=4)), dict(study="s2"),
    dict(seed=7), dict(seed=7, name="n"), dict(model=ModelConfig(depth=20)),
    dict(train=TrainConfig(lr=0.05)), dict(data=DataConfig(val_size=10)),
    dict(train=TrainConfig(threads=3))])
def test_replace_hands_on_only_what_cannot_change(changes):
    trial = TrialConfig(name="t", model=ModelConfig(depth=56), seed=3)
    trial.trial_id  # noqa: B018 - cache it, so replace has something to hand on
    new = trial.replace(**changes)
    fresh = TrialConfig(**{**{f: getattr(trial, f) for f in
                              ("name", "model", "data", "train", "seed", "resources",
                               "study")}, **changes})
    carried = "trial_id" in vars(new)    # handed on, not recomputed
    assert carried == (not {"model", "data", "train", "seed"} & changes.keys())
    assert new.trial_id == fresh.trial_id == _reference_trial_id(fresh)


def test_expanded_trials_have_their_definitions_ids():
    trials = expand_study(load_study_text(GRID))
    # 2 depths x 2 widths x (residual A/B/C + plain) x 3 seeds.
    assert len(trials) == 2 * 2 * 4 * 3
    assert [t.trial_id for t in trials] == [_reference_trial_id(t) for t in trials]
    assert len({t.trial_id for t in trials}) == len(trials)
    assert len({t.name for t in trials}) == len(trials)


# ---- the cap by arithmetic ------------------------------------------------------------

def test_a_billion_repeats_are_refused_by_the_field_cap():
    text = GRID.replace("repeats: 3", "repeats: 1000000000")
    with pytest.raises(StudyError) as info:
        load_study_text(text)   # would need ~10^10 trials' memory if seeds were listed
    assert "repeats: got 1000000000; at most 1000" in str(info.value)


def test_a_hopeless_grid_is_refused_by_arithmetic_naming_max_trials():
    # 24 cells x 1000 seeds = 24,000 > 50 x max_trials: refused before cells are listed.
    with pytest.raises(StudyError) as info:
        load_study_text(GRID.replace("repeats: 3", "repeats: 1000") + "max_trials: 10\n")
    message = str(info.value)
    assert "max_trials=10 " in message and "1000 seed(s)" in message


def test_the_exact_count_is_merged_cells_x_seeds_before_any_seed_is_listed():
    # 24 cells x 3 seeds = 72 written; plain nets merge across shortcuts: 48 trials.
    assert len(expand_study(load_study_text(GRID + "max_trials: 48\n"))) == 48
    with pytest.raises(StudyError, match=r"got 48 trials after constraints and merging; "
                                         r"at most max_trials=47"):
        load_study_text(GRID + "max_trials: 47\n")
    # A large repeat count past the raw bound's reach is refused by the exact count.
    with pytest.raises(StudyError, match=r"got 16000 trials after constraints and "
                                         r"merging; at most max_trials=10000"):
        load_study_text(GRID.replace("repeats: 3", "repeats: 1000")
                        + "max_trials: 10000\n")


def test_seeds_keep_their_order_and_names():
    text = GRID.replace("repeats: 3", "seeds: [5, 1]")
    trials = expand_study(load_study_text(text))
    assert [t.seed for t in trials[:4]] == [5, 1, 5, 1]
    assert trials[0].name.endswith("-s5") and trials[1].name.endswith("-s1")
    assert trials[0].name == "resnet-8-A-w0.25-s5"
