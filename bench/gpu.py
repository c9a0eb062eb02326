"""The GPU engine measured in one command on one GPU; prints (and writes) JSON.

    python bench/gpu.py --out $OUT/gpu_bench.json      # a GPU machine (< 6 minutes)
    python bench/gpu.py --cpu-smoke                    # the same code paths, tiny, on the CPU
    bash bench/gpu_run.sh                              # what the device tool runs

Needs torch (+ numpy); pydantic and pyyaml only to read the study files (bench/gpu_run.sh
installs them from .device/wheels when missing); never ray, mlflow or optuna.

Sections, in order, each written to the JSON as soon as it is done and skipped (with the
reason) when the time budget (--budget-s) would be exceeded:

1. capture_checks: on CUDA, in the configuration trials run (ResNet-20, 3 channels, bf16,
   channels_last, cudnn.benchmark on, the bench's batch): the captured step against the
   eager one for a few steps (plain SGD; Nesterov + label smoothing + gradient clipping)
   next to eager against eager, lr changes reaching the graph (lr 0 -> no move),
   BatchNorm batch counters advanced by every replay, resume after capture (and from a
   CPU checkpoint), evaluation between replays. Every check says whether the step really
   ran captured (`captured`; a failed capture falls back to eager with a warning).
2. throughput: ResNet-20/56/110 and plain-56 (CIFAR shape 3x32x32, batch 128, bf16,
   synthetic on-device data with the engine's augmentation): `workers.train_trial` with
   the CUDA graph and with the eager step (each row says the step class that ran and
   whether it was captured, from the trial's result) (median images/s of the epochs after the first,
   which includes capture and cuDNN autotuning), the reference eager loop
   (`reference/gpu_anchor.py`'s `train_throughput`, loaded from a git-ignored copy,
   .device/reference/, modes bf16cl and fp32), eager evaluation images/s (batch 1024), and
   peak GPU memory next to `workers.memory`'s estimate, and the memory still reserved
   once the trial has returned (its graph pool must be released without a gc.collect()).
3. packing: 1/2/4/8 concurrent `python -m orchestrator.cli train --config trial.json`
   processes (no Ray) on ResNet-20 with the CUDA graph, one CPU thread each (--threads 1,
   OMP_NUM_THREADS=1, as the orchestrator gives a trial with resources.cpu 1); the sum of their per-process
   images/s (median of their middle epochs), and the GPU memory they used together
   (`torch.cuda.mem_get_info` polled) next to the packing check's estimate.
4. correctness: the quick study's plain and residual nets (search_spaces/
   degradation-quick.yaml) on Fashion-MNIST (--fmnist, the four .gz files), bf16, graph
   and eager from the same seed; final train/val/test errors and their differences.
5. degradation_estimate: search_spaces/degradation.yaml (9 trials, 64k iterations) on this
   GPU from the measured rates: step time linear in depth through the measured ResNets
   (plain nets scaled by plain-56 / ResNet-56), evaluation at the measured eval rate, the
   measured start-up, and the measured 4-trial packing gain, on 4 slots: trials started
   in the study's order (packed_minutes, the target below: the cautious figure) and
   longest first (packed_minutes_longest_first, the order `resweep run` uses).
6. targets: ResNet-56 graph >= 4x the reference eager loop; four packed ResNet-20 >= 2.5x
   one; the degradation study <= 20 minutes.
7. compile (GPU only, if time is left): ResNet-20 graph + torch.compile.

This file runs the sections against the time budget and keeps the JSON; the sections
live in bench/gpu_checks.py (1), bench/gpu_engine.py (2, 4, 7), bench/gpu_packing.py (3)
and bench/gpu_estimate.py (5, 6: the arithmetic, no torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, without installing it

import torch  # noqa: E402

from bench.gpu_checks import capture_checks  # noqa: E402
from bench.gpu_engine import compiled, correctness, throughput  # noqa: E402
from bench.gpu_estimate import degradation_estimate, targets  # noqa: E402
from bench.gpu_packing import packing  # noqa: E402


@dataclasses.dataclass
class Sizes:
    """How much work each section does: GPU defaults, or a few steps on the CPU."""

    batch: int = 128
    image: int = 32
    width: float = 1.0
    steps_per_epoch: int = 100       # engine throughput: synthetic images = steps x batch
    graph_epochs: int = 3
    eager_epochs: int = 3
    reference_steps: int = 150
    reference_warmup: int = 20
    eval_batches: int = 10           # eval throughput: batches of 1024
    packing_procs: tuple = (1, 2, 4, 8)
    packing_iterations: int = 1500
    packing_steps_per_epoch: int = 50
    correctness_epochs: int = 5
    correctness_train_size: int | None = None    # None: the study's 10,240
    correctness_test_size: int | None = None     # None: the full 10k
    check_steps: int = 12


SMOKE = Sizes(batch=16, image=16, width=0.25, steps_per_epoch=3, graph_epochs=2,
              eager_epochs=2, reference_steps=3, reference_warmup=1, eval_batches=1,
              packing_procs=(1, 2), packing_iterations=6, packing_steps_per_epoch=3,
              correctness_epochs=1, correctness_train_size=256, correctness_test_size=256,
              check_steps=3)


class Bench:
    """Runs the sections against a time budget; keeps and writes the JSON."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.smoke = args.cpu_smoke
        self.sizes = SMOKE if self.smoke else Sizes()
        self.device = torch.device("cpu" if self.smoke or not torch.cuda.is_available()
                                   else "cuda")
        self.started = time.perf_counter()
        self.out = Path(args.out)
        self.result: dict = {"meta": self._meta(), "sections_skipped": {}}

    # -- bookkeeping -------------------------------------------------------------------
    def _meta(self) -> dict:
        meta = {"torch": torch.__version__, "python": platform.python_version(),
                "mode": "cpu-smoke" if self.args.cpu_smoke else "gpu",
                "git_commit": _git_commit()}
        if self.args.cpu_smoke:
            meta["note"] = ("cpu-smoke: tiny sizes (engine nets at width 0.25, 16x16, batch "
                            "16; the reference loop at its fixed 32x32 size, 20 layers); the "
                            "numbers only show that every section runs")
        if torch.cuda.is_available() and not self.args.cpu_smoke:
            props = torch.cuda.get_device_properties(0)
            meta.update(device=torch.cuda.get_device_name(0),
                        device_memory_bytes=props.total_memory)
        else:
            meta["device"] = "cpu"
        return meta

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def save(self) -> None:
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1))
        os.replace(tmp, self.out)

    def section(self, name: str, needs_s: float, run) -> None:
        """Run `run(self)` into result[name] if `needs_s` seconds are left; record errors."""
        if self.left() < needs_s:
            self.result["sections_skipped"][name] = (f"time budget: {self.left():.0f} s left, "
                                                     f"needs about {needs_s:.0f} s")
            self.log(f"skip {name}: {self.result['sections_skipped'][name]}")
            return
        self.log(f"== {name} (at {self.elapsed():.0f} s)")
        began = time.perf_counter()
        try:
            self.result[name] = run(self)
        except Exception as err:  # noqa: BLE001 - a failed section must not lose the others
            self.result[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            self.log(f"{name} failed: {err}")
        if isinstance(self.result[name], dict):
            self.result[name]["section_s"] = round(time.perf_counter() - began, 1)
        self.save()
        self.free_memory()

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self) -> dict:
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            self.section("capture_checks", 10, capture_checks)
        else:
            self.result["sections_skipped"]["capture_checks"] = \
                "no CUDA device: GraphStep ran its body without capture"
            if self.smoke:   # the same code on the CPU: GraphStep runs its body eagerly
                self.section("capture_checks", 5, capture_checks)
        self.section("throughput", 60 if on_gpu else 5, throughput)
        self.section("packing", 30 if on_gpu else 5, packing)
        self.section("correctness", 30 if on_gpu else 5, correctness)
        self.section("degradation_estimate", 1, degradation_estimate)
        self.result["targets"] = targets(self.result)
        self.save()
        if on_gpu:
            self.section("compile", 60, compiled)
        else:   # inductor's C++ build on a CPU takes minutes: not a smoke test
            self.result["sections_skipped"]["compile"] = "CPU: only measured on a GPU"
            self.save()
        return self.result


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every section for a few steps on the CPU (checks the script)")
    out_dir = os.environ.get("OUT") or "."
    parser.add_argument("--out", default=str(Path(out_dir) / "gpu_bench.json"),
                        help="JSON file (default: $OUT/gpu_bench.json)")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="start no section that would end after this many seconds "
                             "(default 300; the command must finish in 6 minutes)")
    parser.add_argument("--reference", default=str(ROOT / ".device" / "reference" / "gpu_anchor.py"),
                        help="the reference eager loop (a copy of ../shared/reference/gpu_anchor.py)")
    parser.add_argument("--fmnist", default=str(ROOT / ".device" / "fashion-mnist"),
                        help="folder with the four Fashion-MNIST .gz files")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        torch.set_num_threads(1)
    result = Bench(args).run()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
