"""`resweep train`: run one trial in this process, without Ray or MLflow.

How a trial is reproduced outside the tuner, and how the engine is measured on a GPU box
that has only torch. The trial comes from a study (`STUDY --trial NAME_OR_ID`, or
`--where KEY=VALUE` filters that leave one trial) or from a trial JSON (`--config`, the
`TrialConfig.to_dict()` format that the orchestrator logs as trial.json, or the result
file `--out` writes). `--set` overrides a field, as in every command. Heavy imports
(torch, the study loader) happen inside `main`, so `resweep --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "run one trial here, in-process (no Ray, no MLflow); print each epoch; write its JSON"
DESCRIPTION = """\
Run one trial of a study in this process and print one line per epoch (train/val/test
error, loss, lr, images/s, elapsed, ETA). No Ray, no MLflow: use it to reproduce a trial,
debug a configuration, or measure the engine on a machine that has only torch.

Pick the trial:
  STUDY --list                 the study's trials (name, trial_id, depth, residual, seed)
  STUDY --trial NAME_OR_ID     by name, or by trial id (a unique prefix of 4+ hex digits)
  STUDY --where KEY=VALUE      the trials whose KEY equals VALUE (KEY as in a study's
                               space: depth, residual, train.lr, data.train_size; or seed);
                               repeatable, all must hold; together they must leave one
                               trial (or combine with --trial, --list)
  --config TRIAL.json          a saved trial: the trial.json a run logs, or an --out file

--set KEY=VALUE overrides a field as in every command: with STUDY a field of the study
file, before the trials are picked (--set train.epochs=2); with --config a field of the
trial (--set train.epochs=2, --set seed=3). It never picks trials: a --set on a key the
study varies (e.g. model.depth in a grid over depth) is refused, naming the --where that
picks those trials.
"""

EXAMPLES = """\
examples:
  resweep train search_spaces/degradation-quick.yaml --list
  resweep train search_spaces/degradation-quick.yaml --where depth=20 --where residual=false \\
      --set train.epochs=1 --out result.json
  resweep train search_spaces/degradation-quick.yaml --trial resnet-20-A-w0.5-s0 -q
  resweep train --config result.json --set seed=1 -q            # that trial, another seed
  resweep train --config result.json --checkpoint-dir runs/t1   # a rerun resumes there
"""

EXIT_STATUS = ("exit status: 0 finished, 1 diverged (non-finite loss), 2 invalid input or "
               "missing data,\n130 interrupted")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from orchestrator.arg_types import add_quiet_option, add_set_option, positive_int

    parser.add_argument("study", nargs="?", metavar="STUDY",
                        help="a study file (search_spaces/*.yaml)")
    parser.add_argument("--trial", metavar="NAME_OR_ID",
                        help="trial name or trial id (a unique prefix of at least 4 hex digits)")
    parser.add_argument("--where", dest="where", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="keep the study's trials whose KEY equals VALUE (YAML), e.g. "
                             "--where depth=56 --where residual=true (repeatable)")
    add_set_option(parser, target="trial")
    parser.add_argument("--config", metavar="TRIAL.JSON",
                        help="run the trial in this JSON file (TrialConfig.to_dict format, "
                             "or a result written by --out) instead of one from a study")
    parser.add_argument("--list", action="store_true",
                        help="list the study's trials (name, id, depth, residual, seed) and exit")
    parser.add_argument("--out", metavar="FILE.json",
                        help="write the result (TrialResult + the trial config) as JSON")
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="write checkpoint.pt here at every epoch end; resume from it if "
                             "it exists (a corrupt one is reported and ignored)")
    parser.add_argument("--device", metavar="DEVICE",
                        help="auto (default: CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: the trial's train.threads)")
    add_quiet_option(parser, "the trial and its final result")


def _read_trial_json(path: str) -> dict:
    """The trial JSON as data, refused cheaply (exit 2, one line) when it is not a trial
    file: the study loader's caps on size, text, nesting and digits (search_spaces/
    README.md, "Caps"), and no NaN or Infinity (Python's json reads them, JSON has none)."""
    from models.config import ConfigError
    from search_spaces.loading import MAX_DIGITS, MAX_NESTING, read_text

    where = f"--config {path}"
    try:
        text = read_text(path, where, what="a trial file")
    except OSError as err:
        raise ConfigError(f"--config: cannot read {path}: {err.strerror or err}") from None

    def no_constant(name: str):
        raise ConfigError(f"{where}: got {name}; numbers must be finite (JSON has no NaN "
                          "or Infinity)")

    def bounded_int(digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_DIGITS:
            raise ConfigError(f"{where}: got a number of {len(digits)} digits; at most "
                              f"{MAX_DIGITS} digits")
        return int(digits)

    too_deep = (f"{where}: got values nested more than {MAX_NESTING} levels deep; at most "
                f"{MAX_NESTING} levels (a trial needs 2)")
    try:
        data = json.loads(text, parse_constant=no_constant, parse_int=bounded_int)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}:{err.lineno}: not valid JSON: {err.msg} (line "
                          f"{err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise ConfigError(too_deep) from None
    stack = [(data, 1)]
    while stack:  # the depth json accepted (up to ~1000) is still far too deep
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ConfigError(too_deep)
        if isinstance(node, (dict, list)):
            stack.extend((child, depth + 1) for child in
                         (node.values() if isinstance(node, dict) else node))
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: got a JSON {type(data).__name__}; a trial config "
                          "is an object (the trial.json a run logs)")
    return data


def _trial_from_json(path: str, overrides: list[str]):
    """The trial of a JSON file with `--set` applied, checked field by field (the rules
    the worker applies) before torch is imported or anything is built."""
    from models.config import ConfigError, field_problems, validate_model_config
    from orchestrator.arg_types import split_key_value
    from search_spaces.schema import MAX_SEED
    from workers.config import TrialConfig, data_config_problems, train_config_problems

    data = _read_trial_json(path)
    if "model" not in data and isinstance(data.get("trial"), dict):
        data = data["trial"]  # a result written by `resweep train --out`
    data.pop("trial_id", None)
    for item in overrides:
        keys, value = split_key_value(item, "--set")
        node = data
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"--set {item}: {'.'.join(keys)} is not a setting of a trial; "
                                  "use section.field, e.g. model.depth, train.lr, data.train_size")
            node = node[key]
        node[keys[-1]] = value
    try:
        trial = TrialConfig.from_dict(data)
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise ConfigError(f"--config {path}: not a trial config ({err})") from None
    problems = field_problems(trial.model, "model") + data_config_problems(trial.data) + \
        train_config_problems(trial.train) + field_problems(trial.resources, "resources")
    if not 0 <= trial.seed <= MAX_SEED:
        problems.append(f"seed: got {trial.seed}; allowed: an integer >= 0 and <= {MAX_SEED}")
    if not problems:
        try:
            validate_model_config(trial.model)  # the architecture rules
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("\n".join(f"--config {path}: {p}" for p in problems))
    return trial


def _trial_key(key: str) -> str:
    """A key as a study's space writes it -> its path in a trial: "depth" -> "model.depth",
    "train.lr" stays, "seed" stays."""
    return key if key == "seed" or "." in key else f"model.{key}"


def _load(path: str, overrides: list[str]):
    """`load_study(path, overrides)`, as `plan` and `run` do; when that fails because a
    `--set` fixes a key the study varies (the old selecting `--set`), say to use --where."""
    from models.config import ConfigError
    from search_spaces import StudyError, load_study

    try:
        return load_study(path, overrides)
    except StudyError as err:
        if not overrides:
            raise
        try:
            varied = {key.dotted for key in load_study(path).varied_keys} | {"seed"}
        except StudyError:
            varied = set()
        hints = []
        for item in overrides:
            key, _, value = (part.strip() for part in item.partition("="))
            dotted = _trial_key(key)
            if dotted in varied:
                why = "each trial has its own seed" if dotted == "seed" else \
                    f"the study varies {dotted}"
                hints.append(f"--set {item}: {why}; --set overrides a study field and does "
                             f"not pick trials: --where {key}={value} picks those with "
                             "that value")
        if hints:  # every problem of the study still shows, the hints after them
            raise ConfigError("\n".join([str(err), *hints])) from None
        raise


def _plain(value):
    """Tuples as lists, so a YAML list compares equal to a tuple field (milestones)."""
    return list(value) if isinstance(value, tuple) else value


def _study_trials(path: str, overrides: list[str], wheres: list[str]):
    """The study's trials (with `--set` applied to the study file), filtered by each
    `--where KEY=VALUE` (all must hold)."""
    from models.config import ConfigError
    from orchestrator.arg_types import split_key_value
    from search_spaces import expand_study

    for item in wheres:  # a malformed --where is reported before the study is loaded
        split_key_value(item, "--where")
    trials = expand_study(_load(path, overrides))
    for item in wheres:
        keys, value = split_key_value(item, "--where")
        key = ".".join(keys)
        dotted = _trial_key(key)
        section, _, field = dotted.rpartition(".")

        def value_of(trial, section=section, field=field):
            return trial.seed if not section else getattr(getattr(trial, section), field)

        sample = trials[0].to_dict() if trials else {}
        if trials and (section not in ("", "model", "data", "train")
                       or field not in (sample[section] if section else {"seed"})):
            model = ", ".join(sample["model"])
            raise ConfigError(f"--where {item}: got the key {key!r}; seed, a model "
                              f"field ({model}), data.<field> or train.<field>")
        chosen = [t for t in trials if _plain(value_of(t)) == value]
        if not chosen:
            values = sorted({repr(value_of(t)) for t in trials}, key=_numbers_first)
            raise ConfigError(f"--where {item}: no trial of the study has "
                              f"{dotted} = {value!r}; its trials have "
                              f"{', '.join(values) or 'none'}")
        trials = chosen
    return trials


def _numbers_first(text: str) -> tuple[int, float, str]:
    """Sort key of a value's repr: numbers by value (8 before 20), then the rest as text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _pick(trials, wanted: str | None):
    from models.config import ConfigError
    names = ", ".join(t.name for t in trials[:20]) + (" ..." if len(trials) > 20 else "")
    if wanted is None:
        if len(trials) == 1:
            return trials[0]
        raise ConfigError(f"the study has {len(trials)} trials; pick one with --trial "
                          f"NAME_OR_ID or --where KEY=VALUE (or --list): {names}")
    matches = [t for t in trials if t.name == wanted or t.trial_id == wanted]
    if not matches and len(wanted) >= 4:
        matches = [t for t in trials if t.trial_id.startswith(wanted.lower())]
    if len(matches) != 1:
        what = "matches no trial" if not matches else f"matches {len(matches)} trials"
        raise ConfigError(f"--trial: got {wanted!r}, which {what}; trials: {names}")
    return matches[0]


def epoch_line(metrics: dict, train) -> str:
    """One human line per epoch: errors in percent, ETA from the progress so far."""
    from search_spaces.plan import format_duration
    from workers.results import EPOCH, ITERATION

    def pct(key: str) -> str:
        return f"{100 * metrics[key]:6.2f}%" if key in metrics else "    -  "

    elapsed = metrics.get("elapsed_s", 0.0)
    if train.iterations is not None:
        done, total = metrics.get(ITERATION, 0), train.iterations
        epoch = f"epoch {metrics[EPOCH]:>3}"
    else:
        done, total = metrics.get(EPOCH, 0), train.epochs
        epoch = f"epoch {metrics[EPOCH]:>3}/{total}"
    eta = elapsed * (total - done) / done if done else 0.0
    return (f"{epoch}  it {metrics.get(ITERATION, 0):>6}  train {pct('train_error')}  "
            f"val {pct('val_error')}  test {pct('test_error')}  "
            f"loss {metrics.get('train_loss', float('nan')):.4f}  lr {metrics.get('lr', 0):.5f}  "
            f"{metrics.get('images_per_s', 0):8.0f} img/s  elapsed {format_duration(elapsed)}  "
            f"ETA {format_duration(eta)}")


def main(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from models.config import ConfigError
    from workers.results import FINISHED

    if args.config and args.study:
        raise ConfigError("give either STUDY or --config, not both")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        # Checked now: the result of a long trial must not be lost to a typo at the end.
        raise ConfigError(f"--out: got {args.out!r}; its folder does not exist")
    if args.config and args.where:
        raise ConfigError("--where picks trials of a STUDY; --config is one trial (change "
                          "its fields with --set)")
    if args.config:
        trial = _trial_from_json(args.config, args.overrides)
        trials = [trial]
    elif args.study:
        trials = _study_trials(args.study, args.overrides, args.where)
    else:
        raise ConfigError("no trial to run: give a STUDY file (with --trial or --where) or "
                          "--config TRIAL.json; see `resweep train --help`")
    if args.list:
        for t in trials:
            print(f"{t.name:32s} {t.trial_id}  depth {t.model.depth:<4} "
                  f"residual {str(t.model.residual).lower():5s}  seed {t.seed}")
        return 0
    trial = trials[0] if args.config else _pick(trials, args.trial)
    changes = {}
    if args.device:
        changes["device"] = args.device
    if args.threads is not None:
        changes["threads"] = args.threads
    if changes:
        trial = trial.replace(train=dataclasses.replace(trial.train, **changes))

    from workers.trial import train_trial  # torch: only now

    print(f"trial {trial.name} ({trial.trial_id}) of {trial.study}: {trial.model.family} "
          f"depth {trial.model.depth} {'residual' if trial.model.residual else 'plain'} "
          f"width {trial.model.width}, {trial.data.dataset}, seed {trial.seed}", flush=True)

    def report(metrics: dict, checkpoint_path: str | None) -> None:
        if not args.quiet:
            print(epoch_line(metrics, trial.train), flush=True)

    result = train_trial(trial, report, checkpoint_dir=args.checkpoint_dir)
    final = result.final
    print(f"{result.status}: train error {100 * final.get('train_error', float('nan')):.2f}%"
          + (f", test error {100 * final['test_error']:.2f}%" if "test_error" in final else "")
          + f", {result.params:,} params, {result.macs:,} MACs"
          + (f" ({result.error})" if result.error else ""), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"trial": trial.to_dict(), **result.to_dict()}, f, indent=1)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if result.status == FINISHED else 1
