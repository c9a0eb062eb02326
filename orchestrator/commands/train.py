"""`resweep train`: run one trial in this process, without Ray or MLflow.

How a trial is reproduced outside the tuner, and how the engine is measured on a GPU box
that has only torch. The trial comes from a study (`STUDY --trial NAME_OR_ID`, or a study
whose `--set` overrides leave one trial) or from a trial JSON (`--config`, the
`TrialConfig.to_dict()` format that the orchestrator logs as trial.json). Heavy imports
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
  resweep train STUDY.yaml --list                       # the study's trials (name, id)
  resweep train STUDY.yaml --trial resnet-56-A-w0.5-s0  # by name, or by trial id (prefix)
  resweep train STUDY.yaml --set model.depth=56 --set model.residual=true
      # --set on a key the study varies selects trials; on any other key it overrides
      # the study file (e.g. --set train.epochs=2); together they must leave one trial
  resweep train --config trial.json [--set train.epochs=2]   # a saved TrialConfig

examples:
  resweep train search_spaces/degradation-quick.yaml --list
  resweep train search_spaces/degradation-quick.yaml --trial NAME --out result.json
  resweep train --config trial.json --checkpoint-dir runs/t1   # rerun: resumes there

exit status: 0 finished, 1 diverged (non-finite loss), 2 invalid input or missing data
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from orchestrator.arg_types import positive_int

    parser.add_argument("study", nargs="?", metavar="STUDY",
                        help="study YAML file (see search_spaces/*.yaml)")
    parser.add_argument("--trial", metavar="NAME_OR_ID",
                        help="trial name or trial id (a unique prefix of at least 4 hex digits)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="model.depth=56, train.epochs=2, ... (repeatable). With STUDY: "
                             "a key the study varies selects trials, any other key "
                             "overrides the study file; with --config: sets that field")
    parser.add_argument("--config", metavar="TRIAL.JSON",
                        help="run the trial in this JSON file (TrialConfig.to_dict format) "
                             "instead of one from a study")
    parser.add_argument("--list", action="store_true",
                        help="list the study's trials (name, id, depth, residual) and exit")
    parser.add_argument("--out", metavar="FILE.json",
                        help="write the result (TrialResult + the trial config) as JSON")
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="write checkpoint.pt here at every epoch end; resume from it if "
                             "it exists (a corrupt one is reported and ignored)")
    parser.add_argument("--device", metavar="DEVICE",
                        help="auto (default: CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: the trial's train.threads)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def _parse_value(text: str):
    """JSON where it parses (56, 0.1, true, null, [1, 2]), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_override(item: str) -> tuple[list[str], object]:
    from models.config import ConfigError
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set: got {item!r}; expected KEY=VALUE, e.g. model.depth=56")
    return key.strip().split("."), _parse_value(value.strip())


def _trial_from_json(path: str, overrides: list[str]):
    from models.config import ConfigError
    from workers.config import TrialConfig
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"--config: cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: got a JSON {type(data).__name__}; a trial config "
                          "is an object (the trial.json a run logs)")
    data.pop("trial_id", None)
    for item in overrides:
        keys, value = _split_override(item)
        node = data
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"--set {item}: {'.'.join(keys)} is not a setting of a trial; "
                                  "use section.field, e.g. model.depth, train.lr, data.train_size")
            node = node[key]
        node[keys[-1]] = value
    try:
        return TrialConfig.from_dict(data)
    except (TypeError, KeyError) as err:
        raise ConfigError(f"--config {path}: not a trial config ({err})") from None


def _study_trials(path: str, overrides: list[str]):
    """The study's trials. A `--set` on a key the design varies (e.g. model.depth=56 in a
    grid over depth) selects the trials with that value; every other `--set` is applied to
    the study file by `load_study`."""
    from models.config import ConfigError
    from search_spaces import expand_study, load_study

    study = load_study(path)
    varied = {key.dotted for key in study.varied_keys} | {"seed"}
    selectors, passed = [], []
    for item in overrides:
        keys, value = _split_override(item)
        dotted = ".".join(keys) if len(keys) > 1 or keys[0] == "seed" else f"model.{keys[0]}"
        if dotted in varied:
            selectors.append((item, dotted, value))
        else:
            passed.append(item)
    trials = expand_study(load_study(path, passed) if passed else study)
    for item, dotted, value in selectors:
        def value_of(trial, dotted=dotted):
            if dotted == "seed":
                return trial.seed
            section, field = dotted.split(".", 1)
            return getattr(getattr(trial, section), field)

        chosen = [t for t in trials if value_of(t) == value]
        if not chosen:
            values = sorted({repr(value_of(t)) for t in trials})
            raise ConfigError(f"--set {item}: no trial of the study has {dotted} = {value!r}; "
                              f"its trials have {', '.join(values) or 'none'}")
        trials = chosen
    return trials


def _pick(trials, wanted: str | None):
    from models.config import ConfigError
    names = ", ".join(t.name for t in trials[:20]) + (" ..." if len(trials) > 20 else "")
    if wanted is None:
        if len(trials) == 1:
            return trials[0]
        raise ConfigError(f"the study has {len(trials)} trials; pick one with --trial "
                          f"NAME_OR_ID (or --list): {names}")
    matches = [t for t in trials if t.name == wanted or t.trial_id == wanted]
    if not matches and len(wanted) >= 4:
        matches = [t for t in trials if t.trial_id.startswith(wanted.lower())]
    if len(matches) != 1:
        what = "matches no trial" if not matches else f"matches {len(matches)} trials"
        raise ConfigError(f"--trial: got {wanted!r}, which {what}; trials: {names}")
    return matches[0]


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def epoch_line(metrics: dict, train) -> str:
    """One human line per epoch: errors in percent, ETA from the progress so far."""
    def pct(key: str) -> str:
        return f"{100 * metrics[key]:6.2f}%" if key in metrics else "    -  "

    elapsed = metrics.get("elapsed_s", 0.0)
    if train.iterations is not None:
        done, total = metrics.get("iteration", 0), train.iterations
        epoch = f"epoch {metrics['epoch']:>3}"
    else:
        done, total = metrics.get("epoch", 0), train.epochs
        epoch = f"epoch {metrics['epoch']:>3}/{total}"
    eta = elapsed * (total - done) / done if done else 0.0
    return (f"{epoch}  it {metrics.get('iteration', 0):>6}  train {pct('train_error')}  "
            f"val {pct('val_error')}  test {pct('test_error')}  "
            f"loss {metrics.get('train_loss', float('nan')):.4f}  lr {metrics.get('lr', 0):.5f}  "
            f"{metrics.get('images_per_s', 0):8.0f} img/s  elapsed {_clock(elapsed)}  "
            f"ETA {_clock(eta)}")


def main(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from models.config import ConfigError

    if args.config and args.study:
        raise ConfigError("give either STUDY or --config, not both")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        # Checked now: the result of a long trial must not be lost to a typo at the end.
        raise ConfigError(f"--out: got {args.out!r}; its folder does not exist")
    if args.config:
        trial = _trial_from_json(args.config, args.overrides)
        trials = [trial]
    elif args.study:
        trials = _study_trials(args.study, args.overrides)
    else:
        raise ConfigError("no trial to run: give a STUDY file (with --trial or --set) or "
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
    return 0 if result.status == "finished" else 1
