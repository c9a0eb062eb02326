"""One grammar across `resweep` commands: `--set` (a YAML override of a study field, the
same in every command), `--where` (train's trial selection), `-q/--quiet`, the help
layout (examples and exit status last) and one-line usage errors (exit status 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.cli import COMMANDS, build_parser
from orchestrator.cli import main as resweep

QUICK_STUDY = "search_spaces/degradation-quick.yaml"
SHRINK = ["--set", "data.train_size=256", "--set", "data.val_size=100",
          "--set", "data.test_size=200", "--set", "train.epochs=1"]


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        resweep([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_ends_with_examples_then_exit_status(command, capsys):
    text = _help(command, capsys)
    options, examples, status = (text.index("\noptions:"), text.index("\nexamples:\n"),
                                 text.index("\nexit status: 0"))
    assert options < examples < status          # the same place in every --help
    lines = text[examples:status].strip().splitlines()[1:]
    assert lines and all(line.startswith(("  ", "      ")) for line in lines)
    assert any(f"resweep {command}" in line for line in lines)


def _option(command: str, flag: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices[command]
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_shared_options_are_one_definition():
    sets = [_option(c, "--set") for c in ("plan", "run", "train")]
    assert all(a is not None and a.metavar == "KEY=VALUE" and a.dest == "overrides"
               and "VALUE is YAML" in a.help for a in sets)
    for command in ("run", "train", "report"):
        quiet = _option(command, "-q")
        assert quiet is not None and quiet.option_strings == ["-q", "--quiet"]
        assert quiet.help.startswith("print only ") and "no progress" in quiet.help
    assert _option("ui", "--port").type.__name__ == "port"


def test_set_values_are_yaml_in_every_command(tmp_path, capsys, fixed_calibration):
    # `.05` and `1_000` are numbers in YAML (and in a study file), strings in JSON.
    overrides = ["--set", "train.lr=.05", "--set", "data.test_size=1_000"]
    assert resweep(["plan", QUICK_STUDY, *overrides, "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["trials"][0]["config"]
    assert planned["train"]["lr"] == 0.05 and planned["data"]["test_size"] == 1000
    assert resweep(["run", QUICK_STUDY, *overrides, "--dry-run",
                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0
    assert "plain-20-A-w0.5-s0" in capsys.readouterr().out
    out = tmp_path / "r.json"
    assert resweep(["train", QUICK_STUDY, "--trial", "plain-20-A-w0.5-s0", *SHRINK,
                    "--set", "train.lr=.05", "--set", "train.weight_decay=5e-4",
                    "--out", str(out), "-q"]) == 0
    trial = json.loads(out.read_text())["trial"]
    assert trial["train"]["lr"] == 0.05 and trial["train"]["weight_decay"] == 5e-4
    assert trial["data"]["train_size"] == 256 and trial["name"] == "plain-20-A-w0.5-s0"
    printed = capsys.readouterr().out
    assert "epoch   1/1" not in printed and "finished: train error" in printed   # -q
    # --config takes the --out file back; its --set reads YAML too
    again = tmp_path / "again.json"
    assert resweep(["train", "--config", str(out), "--set", "train.lr=5e-2",
                    "--set", "seed=3", "--out", str(again), "--quiet"]) == 0
    rerun = json.loads(again.read_text())["trial"]
    assert rerun["train"]["lr"] == 0.05 and rerun["seed"] == 3


def test_where_picks_trials_and_says_what_exists(capsys):
    assert resweep(["train", QUICK_STUDY, "--where", "depth=44", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [f"{kind}-44-A-w0.5-s{seed}" for kind in ("plain", "resnet")
                     for seed in (0, 1, 2)]
    assert resweep(["train", QUICK_STUDY, "--where", "residual=true", "--where", "seed=0",
                    "--where", "train.lr=0.1", "--where", "model.depth=20", "--list"]) == 0
    assert capsys.readouterr().out.split()[0] == "resnet-20-A-w0.5-s0"
    assert resweep(["train", QUICK_STUDY, "--where", "depth=57"]) == 2
    err = capsys.readouterr().err
    assert "--where depth=57: no trial of the study has model.depth = 57" in err
    assert "its trials have 8, 20, 44" in err
    assert resweep(["train", QUICK_STUDY, "--where", "dpth=56"]) == 2
    assert "got the key 'dpth'; seed, a model field (family, depth" in capsys.readouterr().err
    assert resweep(["train", QUICK_STUDY, "--where", "depth=44"]) == 2
    assert "the study has 6 trials; pick one with --trial" in capsys.readouterr().err


def test_set_on_a_varied_key_names_the_where_that_picks_it(capsys):
    assert resweep(["train", QUICK_STUDY, "--set", "model.depth=56", "--set", "seed=0"]) == 2
    err = capsys.readouterr().err.splitlines()
    # Every problem the loader found still shows (with file:line), then the hints.
    assert err[:2] == [
        "resweep train: error: search_spaces/degradation-quick.yaml (--set seed=0): seed: got "
        "the unknown key 'seed'; allowed: name, description, data, train, model, design, "
        "space, baseline, vary, constraints, repeats, seeds, search, onset, resources, "
        "max_trials",
        "resweep train: error: search_spaces/degradation-quick.yaml:29: space.depth: got "
        "'depth' here and in model.depth; a field is either fixed in `model` or varied in "
        "`space`, remove one"]
    assert err[2:] == [
        "resweep train: error: --set model.depth=56: the study varies model.depth; --set "
        "overrides a study field and does not pick trials: --where model.depth=56 picks "
        "those with that value",
        "resweep train: error: --set seed=0: each trial has its own seed; --set overrides a "
        "study field and does not pick trials: --where seed=0 picks those with that value"]
    # plan and run refuse the same --set (a field is either fixed or varied)
    assert resweep(["plan", QUICK_STUDY, "--set", "model.depth=56"]) == 2
    assert "a field is either fixed in `model` or varied in `space`" in capsys.readouterr().err
    # ... and a --set of a field the study does not vary overrides it, as everywhere
    assert resweep(["train", QUICK_STUDY, "--set", "model.width=0.25", "--list"]) == 0
    assert "plain-20-A-w0.25-s0" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["ui", "--port", "0"], "argument --port: got 0; a port number 1..65535"),
    (["ui", "--port", "65536"], "argument --port: got 65536; a port number 1..65535"),
    (["ui", "--port", "http"], "argument --port: got 'http'; a port number 1..65535"),
    (["ui", "--study", "degradation"], "argument --study: got 'degradation'; the study is "
     "now the positional STUDY, as in the other commands: resweep ui degradation"),
    (["run", QUICK_STUDY, "--max-concurrent", "two"],
     "argument --max-concurrent: got 'two'; a whole number >= 1"),
    (["run", QUICK_STUDY, "--max-failures", "-1"],
     "argument --max-failures: got -1; a whole number >= 0"),
    (["plan", QUICK_STUDY, "--gpu-memory", "lots"],
     "argument --gpu-memory: got 'lots'; a number > 0"),
    (["train", QUICK_STUDY, "--threads", "0"], "argument --threads: got 0; a whole number >= 1"),
])
def test_a_bad_option_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        resweep(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"resweep {argv[0]}: error: {message}")
    assert err.rstrip().endswith(f"(see `resweep {argv[0]} --help`)")


@pytest.mark.parametrize("argv,message", [
    # a study's --set is checked by the study loader, with the file's other problems
    (["plan", QUICK_STUDY, "--set", "train.epochs"],
     f"{QUICK_STUDY} (--set train.epochs): train.epochs: got 'train.epochs'; write --set "
     "key.path=value"),
    (["run", QUICK_STUDY, "--set", "space.depth=[20,"],
     f"{QUICK_STUDY} (--set space.depth=[20,): space.depth: got '[20,'; a YAML value"),
    (["train", QUICK_STUDY, "--set", "space.depth=[20,"],
     f"{QUICK_STUDY} (--set space.depth=[20,): space.depth: got '[20,'; a YAML value"),
    # the items train reads itself say the same
    (["train", QUICK_STUDY, "--where", "=56"], "--where =56: got '=56'; write --where "
     "key.path=value, e.g. --where model.depth=56"),
    (["train", QUICK_STUDY, "--where", "depth=[20,"],
     "--where depth=[20,: got '[20,'; a YAML value (not valid YAML"),
])
def test_a_bad_key_value_is_one_line_and_exit_2(argv, message, capsys):
    assert resweep(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"resweep {argv[0]}: error: {message}"), err


def test_a_bad_set_on_a_trial_config_is_one_line_and_exit_2(tmp_path, capsys):
    config = tmp_path / "trial.json"
    config.write_text(json.dumps({"name": "t", "model": {"depth": 8}}))
    assert resweep(["train", "--config", str(config), "--set", "train.lr=[0.1,"]) == 2
    assert capsys.readouterr().err.startswith(
        "resweep train: error: --set train.lr=[0.1,: got '[0.1,'; a YAML value (not valid")


def test_a_bad_option_from_the_shell_has_no_traceback():
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "ui", "--port", "99999"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("resweep ui: error: argument --port: got 99999; a port number "
                           "1..65535 (see `resweep ui --help`)\n")


def test_output_into_a_closed_pipe_ends_quietly():
    # `resweep schema | head -1`: the reader is gone before the output is written
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "schema"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 141 and err == ""
