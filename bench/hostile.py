"""Hostile inputs: each must be refused with exit status 2, one line, no traceback, fast.

Every case is a file (a study, or a trial JSON for `resweep train --config`) or a `--set`
value written to break the loader: non-text bytes, a huge file, YAML alias expansion,
deep nesting, enormous or non-finite numbers, names that are paths. The script runs each
through the real CLI in a child process and prints JSON: per case the exit status, the
seconds, the child's peak RSS (MB, `os.wait4` rusage of that child alone), whether the
error was one line without a traceback, and whether it names what the case expects.

    python bench/hostile.py                 # all cases
    python bench/hostile.py --only laughs   # the cases whose name contains "laughs"

The targets (issue 14): exit 2 within 2 s and 300 MB on a 2-core machine. Nothing here
is a timed test: tests/search_spaces/test_hostile_study.py runs the same cases and asserts the exit
status and the message only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A valid grid of two tiny nets; each case breaks one thing in it.
STUDY = """\
name: hostile
data: {dataset: fashion-mnist, train_size: 256, val_size: 64, augment: false}
train: {recipe: cosine, epochs: 1, threads: 1}
model: {family: cifar, width: 0.25}
design: grid
space:
  residual: [false, true]
"""

# The trial JSON `resweep train --config` reads (TrialConfig.to_dict, trimmed).
TRIAL = {"name": "t", "study": "adhoc", "seed": 0,
         "model": {"family": "cifar", "depth": 8, "width": 0.25, "in_channels": 1,
                   "image_size": 28, "num_classes": 10},
         "data": {"dataset": "fashion-mnist", "train_size": 256, "val_size": 64},
         "train": {"epochs": 1, "threads": 1, "probes": False}}


def _edit(old: str, new: str) -> str:
    assert old in STUDY, old
    return STUDY.replace(old, new)


def _laughs(levels: int = 9, fan: int = 9) -> str:
    """The "billion laughs": each anchor aliases the previous one `fan` times."""
    lines = ["name: hostile", "description: &a0 lol"]
    for i in range(1, levels + 1):
        lines.append(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]")
    return "\n".join(lines) + "\n"


def _merge_laughs(levels: int = 9, fan: int = 9) -> str:
    """Alias expansion through merge keys (`<<: [*m, *m, ...]`)."""
    lines = ["name: hostile", "m0: &m0 {k: v}"]
    for i in range(1, levels + 1):
        lines.append(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * fan)}]}}")
    return "\n".join(lines) + "\n"


def _flow_laughs(levels: int = 9, fan: int = 9) -> str:
    """The same in one flow value (for --set): [&a0 lol, &a1 [*a0, ...], ...]."""
    items = ["&a0 lol"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * fan)}]"
                           for i in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def _search(setting: str) -> str:
    """The study as a search over depth, with one search setting."""
    return STUDY.replace("design: grid", "design: search").replace(
        "residual: [false, true]", "depth: {choice: [8, 14]}") + f"search: {{{setting}}}\n"


def _trial(**changes) -> bytes:
    data = json.loads(json.dumps(TRIAL))
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        (data[section] if key else data)[key or section] = value
    return json.dumps(data).encode()


@dataclass
class Case:
    """One hostile input. `argv` uses {file} for the written file; `expect` are strings
    the one-line message must contain."""

    name: str
    content: bytes | None
    expect: list[str]
    argv: list[str] = field(default_factory=lambda: ["plan", "{file}"])
    suffix: str = ".yaml"


def _study(name: str, text: str | bytes, expect: list[str], **kw) -> Case:
    return Case(name, text.encode() if isinstance(text, str) else text, expect, **kw)


def _set(name: str, value: str, expect: list[str]) -> Case:
    return Case(name, STUDY.encode(), expect, argv=["plan", "{file}", "--set", value])


def _config(name: str, content: bytes, expect: list[str]) -> Case:
    return Case(name, content, expect, argv=["train", "--config", "{file}"], suffix=".json")


DEEP = 5000

CASES: list[Case] = [
    # ---- not text -----------------------------------------------------------------
    _study("nul-byte", STUDY.replace("design", "des\0ign").encode(),
           ["study.yaml:5", "NUL byte", "UTF-8 text"]),
    _study("invalid-utf8", STUDY.encode().replace(b"hostile", b"host\xffile"),
           ["study.yaml:1", "UTF-8"]),
    _study("binary", bytes(range(256)) * 64, ["study.yaml", "UTF-8 text"]),
    _study("utf16", STUDY.encode("utf-16"), ["study.yaml", "UTF-16", "UTF-8"]),
    _study("control-char", STUDY.replace("hostile", "host\x07ile").encode(),
           ["study.yaml:1", "control character"]),
    _study("huge-file", STUDY + "# " + "x" * 2_000_000 + "\n",
           ["study.yaml", "bytes", "at most 1000000"]),
    _study("dev-zero", None, ["/dev/zero", "at most 1000000"], argv=["plan", "/dev/zero"]),
    _study("directory", None, ["cannot be read"], argv=["plan", "/tmp"]),
    # ---- structure ----------------------------------------------------------------
    _study("billion-laughs", _laughs(), ["study.yaml:", "aliases", "at most 10000"]),
    _study("merge-laughs", _merge_laughs(), ["study.yaml:", "at most 10000"]),
    _study("many-nodes", "name: hostile\nx: [" + ", ".join(["1"] * 50_000) + "]\n",
           ["study.yaml:", "at most 10000"]),
    _study("deep-list", "name: hostile\nspace:\n  depth: " + "[" * DEEP + "]" * DEEP + "\n",
           ["study.yaml:3", "nested", "at most 50"]),
    _study("deep-mapping", "name: hostile\nx: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n",
           ["study.yaml:2", "nested", "at most 50"]),
    _study("deep-block", "name: hostile\nx:\n" + "".join(
        " " * i + "- \n" for i in range(1, 200)), ["study.yaml:", "nested", "at most 50"]),
    _study("long-number", STUDY + "repeats: " + "9" * 5000 + "\n",
           ["study.yaml:8", "repeats", "digits"]),
    # ---- enormous numbers, one per numeric field ------------------------------------
    _study("model-depth", _edit("width: 0.25", "width: 0.25, depth: 60000002"),
           ["study.yaml:4", "model.depth", "60000002", "at most 1202"]),
    _study("space-depth", _edit("residual: [false, true]", "depth: [8, 60000002]"),
           ["study.yaml:7", "space.depth[1]", "60000002", "at most 1202"]),
    _study("search-depth", STUDY.replace("design: grid", "design: search").replace(
        "residual: [false, true]", "depth: {int: {low: 8, high: 60000002}}") + "search: {num_samples: 2}\n",
        ["study.yaml:7", "space.depth.int.high", "at most 1202"]),
    _study("width", _edit("width: 0.25", "width: 1.0e+300"),
           ["study.yaml:4", "model.width", "at most 64"]),
    _study("repeats", STUDY + "repeats: 1000000000\n",
           ["study.yaml:8", "repeats", "1000000000", "at most 1000"]),
    _study("seeds-value", STUDY + "seeds: [0, 100000000000000000000]\n",
           ["study.yaml:8", "seeds[1]", "at most 4294967295"]),
    _study("epochs", _edit("epochs: 1", "epochs: 1000000000000"),
           ["study.yaml:3", "train.epochs", "at most 10000"]),
    _study("iterations", _edit("epochs: 1", "epochs: null, iterations: 1000000000000"),
           ["study.yaml:3", "train.iterations", "at most 10000000"]),
    _study("batch-size", _edit("epochs: 1", "epochs: 1, batch_size: 1000000000"),
           ["study.yaml:3", "train.batch_size", "at most 65536"]),
    _study("image-size", _edit("width: 0.25", "width: 0.25, image_size: 1000000000"),
           ["study.yaml:4", "model.image_size", "at most 4096"]),
    _study("hidden", _edit("family: cifar, width: 0.25", "family: mlp, hidden: 1000000000"),
           ["study.yaml:4", "model.hidden", "at most 65536"]),
    _study("stages", _edit("family: cifar, width: 0.25",
                           "family: imagenet, stages: [3, 4, 1000000000, 3]"),
           ["study.yaml:4", "model.stages[2]", "at most 200"]),
    _study("train-size", _edit("train_size: 256", "train_size: 100000000000000"),
           ["study.yaml:2", "data.train_size", "at most"]),
    _study("num-samples", _search("num_samples: 1000000000000"),
        ["study.yaml:8", "search.num_samples", "at most 10000"]),
    _study("max-concurrent", _search("max_concurrent: 1000000000000"),
        ["study.yaml:8", "search.max_concurrent", "at most 1024"]),
    _study("max-trials", STUDY + "max_trials: 1000000000000\n",
           ["study.yaml:8", "max_trials", "at most 10000"]),
    _study("resources-cpu", STUDY + "resources: {cpu: 1.0e+12}\n",
           ["study.yaml:8", "resources.cpu", "at most 1024"]),
    _study("resources-gpu", STUDY + "resources: {gpu: 1000000000}\n",
           ["study.yaml:8", "resources.gpu", "at most 64"]),
    # ---- not finite ---------------------------------------------------------------
    _study("nan-lr", _edit("epochs: 1", "epochs: 1, lr: .nan"),
           ["study.yaml:3", "train.lr", "got nan", "finite"]),
    _study("inf-width", _edit("width: 0.25", "width: .inf"),
           ["study.yaml:4", "model.width", "got inf", "finite"]),
    _study("minus-inf-decay", _edit("epochs: 1", "epochs: 1, weight_decay: -.inf"),
           ["study.yaml:3", "train.weight_decay", "got -inf", "finite"]),
    _study("overflow-float", _edit("epochs: 1", "epochs: 1, lr: 1e999"),
           ["study.yaml:3", "train.lr", "got inf", "finite"]),
    _study("nan-in-space", _edit("residual: [false, true]", "train.lr: [0.1, .nan]"),
           ["study.yaml:7", "space.train.lr[1]", "got nan", "finite"]),
    # ---- names --------------------------------------------------------------------
    _study("name-path", STUDY.replace("name: hostile", "name: ../../etc/passwd"),
           ["study.yaml:1", "name", "letters, digits"]),
    _study("name-absolute", STUDY.replace("name: hostile", "name: /tmp/x"),
           ["study.yaml:1", "name"]),
    _study("name-empty", STUDY.replace("name: hostile", "name: ''"),
           ["study.yaml:1", "name"]),
    _study("name-long", STUDY.replace("name: hostile", "name: " + "a" * 1000),
           ["study.yaml:1", "name", "at most 100"]),
    # ---- --set values -------------------------------------------------------------
    _set("set-depth", "model.depth=60000002", ["--set model.depth=60000002",
                                               "at most 1202"]),
    _set("set-repeats", "repeats=1000000000", ["--set repeats=1000000000", "at most 1000"]),
    _set("set-nan", "train.lr=.nan", ["--set train.lr=.nan", "got nan", "finite"]),
    _set("set-deep", "space.depth=" + "[" * DEEP + "]" * DEEP, ["--set", "nested",
                                                              "at most 50"]),
    _set("set-laughs", "description=" + _flow_laughs(), ["--set", "aliases",
                                                         "at most 10000"]),
    # ---- resweep train --config (JSON) ----------------------------------------------
    _config("config-nul", _trial().replace(b'"t"', b'"t\0"'), ["NUL byte"]),
    _config("config-invalid-utf8", _trial().replace(b'"t"', b'"t\xff"'), ["UTF-8"]),
    _config("config-huge", b'{"name": "' + b"x" * 2_000_000 + b'"}', ["at most 1000000"]),
    _config("config-deep", b'{"model": ' + b"[" * DEEP + b"]" * DEEP + b"}",
            ["nested", "at most 50"]),
    _config("config-nan", _trial().replace(b'"seed": 0', b'"seed": 0, "x": NaN'),
            ["NaN", "finite"]),
    _config("config-long-int", _trial().replace(b'"depth": 8', b'"depth": ' + b"9" * 5000),
            ["digits"]),
    _config("config-depth", _trial(model__depth=60000002),
            ["model.depth", "60000002", "<= 1202"]),
    _config("config-epochs", _trial(train__epochs=10**12),
            ["train.epochs", "<= 10000"]),
    _config("config-inf", _trial().replace(b'"width": 0.25', b'"width": Infinity'),
            ["Infinity", "finite"]),
    _config("config-list", b"[1, 2, 3]", ["a trial config is an object"]),
]


def _popen_wait(child: subprocess.Popen, timeout: float):
    """Wait for `child` with os.wait4 (its own rusage); (status, rusage) or kill it."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() > deadline:
            child.kill()
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            return usage
        time.sleep(0.005)


def measure(case: Case, folder: Path, timeout: float = 60.0) -> dict:
    """Run one case in a child process: exit status, seconds, the child's own peak RSS
    (os.wait4, not Popen.wait), and what its stderr says."""
    path = folder / ("study.yaml" if case.suffix == ".yaml" else "trial.json")
    if case.content is not None:
        path.write_bytes(case.content)
    argv = [a.replace("{file}", str(path)) for a in case.argv]
    env = dict(os.environ, PYTHONPATH=str(REPO), RESWEEP_CACHE_DIR=str(folder / "cache"))
    with open(folder / "stderr", "wb") as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *argv],
                                 stdout=subprocess.DEVNULL, stderr=err, cwd=folder, env=env)
        usage = _popen_wait(child, timeout)
        seconds = time.perf_counter() - start
    stderr = (folder / "stderr").read_text(errors="replace")
    lines = [line for line in stderr.splitlines() if line.strip()]
    return {"case": case.name, "exit": child.returncode, "seconds": round(seconds, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "one_line": len(lines) == 1, "traceback": "Traceback" in stderr,
            "names_expected": all(s in stderr for s in case.expect),
            "message": lines[0][:240] if lines else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if args.only in case.name:
                folder = Path(tmp) / case.name
                folder.mkdir()
                results.append(measure(case, folder, args.timeout))
    ok = [r for r in results if r["exit"] == 2 and r["one_line"] and not r["traceback"]
          and r["names_expected"] and r["seconds"] < 2 and r["peak_rss_mb"] < 300]
    print(json.dumps({"cases": results, "passed": len(ok), "total": len(results),
                      "max_seconds": max((r["seconds"] for r in results), default=0),
                      "max_peak_rss_mb": max((r["peak_rss_mb"] for r in results),
                                             default=0)}, indent=1))
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
