"""The GPU engine measured in one command on one GPU; prints (and writes) JSON.

    python bench/gpu.py --out $OUT/gpu_bench.json      # a GPU machine (< 6 minutes)
    python bench/gpu.py --cpu-smoke                    # the same code paths, tiny, on the CPU
    bash bench/gpu_run.sh                              # what the device tool runs

Needs torch (+ numpy); pydantic and pyyaml only to read the study files (bench/gpu_run.sh
installs them from .device/wheels when missing); never ray, mlflow or optuna.

Sections, in order, each written to the JSON as soon as it is done and skipped (with the
reason) when the time budget (--budget-s) would be exceeded:

1. capture_checks: on CUDA, the captured step against the eager one for a few steps (plain
   SGD; Nesterov + label smoothing + gradient clipping), lr changes reaching the graph
   (lr 0 -> no move), BatchNorm batch counters advanced by every replay.
2. throughput: ResNet-20/56/110 and plain-56 (CIFAR shape 3x32x32, batch 128, bf16,
   synthetic on-device data with the engine's augmentation): `workers.train_trial` with
   the CUDA graph and with the eager step (median images/s of the epochs after the first,
   which includes capture and cuDNN autotuning), the reference eager loop
   (`reference/gpu_anchor.py`'s `train_throughput`, loaded from a git-ignored copy,
   .device/reference/, modes bf16cl and fp32), eager evaluation images/s (batch 1024), and
   peak GPU memory next to `workers.memory`'s estimate.
3. packing: 1/2/4/8 concurrent `python -m orchestrator.cli train --config trial.json`
   processes (no Ray) on ResNet-20 with the CUDA graph; the sum of their per-process
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
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, without installing it

import torch  # noqa: E402

from models import build_model  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from workers.config import DataConfig, Resources, TrainConfig, TrialConfig  # noqa: E402
from workers.engine import EagerStep, evaluate, make_train_step  # noqa: E402
from workers.graph_step import GraphStep  # noqa: E402
from workers.memory import check_gpu_packing, estimate_trial_memory  # noqa: E402
from workers.schedule import lr_at  # noqa: E402
from workers.trial import train_trial  # noqa: E402

NETS = {"resnet20": (20, True), "resnet56": (56, True), "resnet110": (110, True),
        "plain56": (56, False)}
TARGETS = {"resnet56_graph_vs_reference": 4.0, "packing4_gain": 2.5,
           "degradation_minutes": 20.0}


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
        """Run `run()` into result[name] if `needs_s` seconds are left; record errors."""
        if self.left() < needs_s:
            self.result["sections_skipped"][name] = (f"time budget: {self.left():.0f} s left, "
                                                     f"needs about {needs_s:.0f} s")
            log(f"skip {name}: {self.result['sections_skipped'][name]}")
            return
        log(f"== {name} (at {self.elapsed():.0f} s)")
        began = time.perf_counter()
        try:
            self.result[name] = run()
        except Exception as err:  # noqa: BLE001 - a failed section must not lose the others
            self.result[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            log(f"{name} failed: {err}")
        if isinstance(self.result[name], dict):
            self.result[name]["section_s"] = round(time.perf_counter() - began, 1)
        self.save()
        _free_memory()

    # -- 1. capture checks -------------------------------------------------------------
    def capture_checks(self) -> dict:
        from workers.graph_step import GraphCaptureWarning

        device, steps = self.device, self.sizes.check_steps
        model_cfg = ModelConfig(depth=8, width=0.5, in_channels=1, image_size=16)
        gen = torch.Generator().manual_seed(1)
        data = [(torch.randn(16, 1, 16, 16, generator=gen).to(device),
                 torch.randint(0, 10, (16,), generator=gen).to(device)) for _ in range(4)]
        out = {}
        for label, options in (("sgd", {}), ("nesterov_smoothing_clip",
                                              {"nesterov": True, "label_smoothing": 0.1,
                                               "grad_clip": 0.5})):
            train = TrainConfig(lr=0.1, batch_size=16, **options)
            runs = {}
            for kind in ("graph", "eager"):
                torch.manual_seed(0)
                model = build_model(model_cfg).to(device)
                if device.type == "cuda":
                    model = model.to(memory_format=torch.channels_last)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", GraphCaptureWarning)
                    step = GraphStep(model, train, device) if kind == "graph" else \
                        EagerStep(model, train, device)
                    losses = []
                    for i in range(steps):
                        step.set_lr(lr_at(train, i, steps))
                        losses.append(float(step(*data[i % 4])[0]))
                runs[kind] = {"model": model, "losses": losses, "step": step,
                              "warnings": [str(w.message)[:300] for w in caught]}
            graph, eager = runs["graph"], runs["eager"]
            bn = next(m for m in graph["model"].modules()
                      if isinstance(m, torch.nn.BatchNorm2d))
            out[label] = {
                "captured": getattr(graph["step"], "graph", None) is not None,
                "capture_warnings": graph["warnings"],
                "max_weight_difference": max(
                    float((a.float() - b.float()).abs().max()) for a, b in
                    zip(graph["model"].state_dict().values(), eager["model"].state_dict().values())),
                "max_loss_difference": max(abs(a - b) for a, b in zip(graph["losses"], eager["losses"])),
                "bn_batches_tracked": int(bn.num_batches_tracked), "steps": steps}
        # lr changes reach the (captured) step: parameters move by lr x update
        torch.manual_seed(0)
        model = build_model(model_cfg).to(device)
        step = GraphStep(model, TrainConfig(lr=0.1, batch_size=16), device)
        step(*data[0])
        moves = []
        for lr in (0.1, 0.0, 0.01):
            step.set_lr(lr)
            before = [p.detach().clone() for p in model.parameters()]
            step(*data[0])
            moves.append([lr, max(float((p.detach() - b).abs().max())
                                  for p, b in zip(model.parameters(), before))])
        out["lr_tensor_moves"] = moves
        out["lr_zero_leaves_weights"] = moves[1][1] == 0.0
        return out

    # -- 2. throughput -----------------------------------------------------------------
    def net_config(self, name: str, channels: int = 3, image: int | None = None) -> ModelConfig:
        depth, residual = NETS[name]
        return ModelConfig(family="cifar", depth=depth, residual=residual,
                           width=self.sizes.width, in_channels=channels,
                           image_size=image or self.sizes.image, num_classes=10)

    def engine_trial(self, name: str, graph: bool, epochs: int, steps_per_epoch: int,
                     iterations: int | None = None) -> TrialConfig:
        s = self.sizes
        train = TrainConfig(epochs=None if iterations else epochs, iterations=iterations,
                            batch_size=s.batch, lr=0.05, precision="bf16",
                            eval_every=10_000, cuda_graph=graph, probes=False,
                            threads=1 if self.smoke else None,
                            device="cpu" if self.smoke else "auto")
        data = DataConfig(dataset="synthetic", train_size=steps_per_epoch * s.batch,
                          val_size=0, test_size=256, augment=True)
        return TrialConfig(name=f"bench-{name}-{'graph' if graph else 'eager'}",
                           model=self.net_config(name), data=data, train=train, seed=0,
                           resources=Resources(cpu=1, gpu=0.25), study="bench-gpu")

    def engine_rate(self, name: str, graph: bool) -> dict:
        s = self.sizes
        epochs = s.graph_epochs if graph else s.eager_epochs
        trial = self.engine_trial(name, graph, epochs, s.steps_per_epoch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            began = time.perf_counter()
            result = train_trial(trial)
            total = time.perf_counter() - began
        rates = [h["images_per_s"] for h in result.history]
        steady = rates[1:] or rates
        row = {"net": name, "path": "engine-graph" if graph else "engine-eager",
               "images_per_s": round(statistics.median(steady), 1),
               "epoch_images_per_s": [round(r, 1) for r in rates],
               "trial_s": round(total, 2), "status": result.status,
               "step_class": type(make_train_step(build_model(trial.model).to(self.device),
                                                  trial.train, self.device)).__name__,
               "warnings": sorted({str(w.message)[:300] for w in caught})}
        if self.device.type == "cuda":
            estimate = estimate_trial_memory(trial)
            row["memory"] = {
                "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                # the estimate without the allowances that the allocator does not see
                "estimate_allocator_bytes": estimate.total - estimate.cuda_context
                - estimate.workspace,
                "estimate": estimate.to_dict()}
        return row

    def eval_rate(self, name: str) -> dict:
        """Eager evaluation (batch 1024, bf16, channels_last) images/s: the eval cost."""
        device, s = self.device, self.sizes
        model = build_model(self.net_config(name)).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        batch = 1024 if not self.smoke else 64
        images = torch.randn(batch, 3, s.image, s.image, device=device)
        labels = torch.randint(0, 10, (batch,), device=device)
        data = [(images, labels)] * s.eval_batches
        evaluate(model, data[:1], device, "bf16")           # warm-up (cuDNN autotuning)
        _sync(device)
        began = time.perf_counter()
        evaluate(model, data, device, "bf16")               # ends with a host read
        seconds = time.perf_counter() - began
        return {"net": name, "path": "engine-eval", "images_per_s":
                round(batch * len(data) / seconds, 1)}

    def load_reference(self):
        """The reference eager loop's module (its `train_throughput`), from its copy."""
        path = Path(self.args.reference)
        if not path.is_file():
            raise FileNotFoundError(f"reference loop {path} not found: copy "
                                    "../shared/reference/gpu_anchor.py there (git-ignored)")
        spec = importlib.util.spec_from_file_location("gpu_anchor", path)
        anchor = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(anchor)
        return anchor

    def reference_rate(self, anchor, name: str, mode: str) -> dict:
        s = self.sizes
        # on the CPU smoke run its nets at 20 layers (the reference's width is fixed)
        ref_name = name if not self.smoke else name.replace("110", "20").replace("56", "20")
        flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
                 torch.backends.cudnn.allow_tf32)
        # as the reference's main() sets them for its single-trial rows
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        try:
            r = anchor.train_throughput(ref_name, mode, s.batch, s.reference_steps,
                                        s.reference_warmup, self.device)
        finally:
            (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32) = flags
        return {"net": name, "path": f"reference-{mode}", "images_per_s": r["img_per_s"],
                "reference_net": ref_name, "raw": r}

    def throughput(self) -> dict:
        """Per net, back to back on the same GPU: engine graph, engine eager, eval, and the
        reference loop in bf16 + channels_last and in fp32."""
        rows = []
        try:
            anchor = self.load_reference()
        except Exception as err:  # noqa: BLE001 - the engine rows are still worth having
            anchor = None
            rows.append({"path": "reference", "error": f"{type(err).__name__}: {err}"[:500]})
        for name in NETS:
            jobs = [lambda: self.engine_rate(name, True), lambda: self.engine_rate(name, False),
                    lambda: self.eval_rate(name)]
            if anchor is not None:
                jobs += [lambda m=m: self.reference_rate(anchor, name, m)
                         for m in ("bf16cl", "fp32")]
            for job in jobs:
                if self.left() < 20:
                    break
                rows.append(job())
                log(f"  {name} {rows[-1]['path']}: {rows[-1]['images_per_s']} img/s "
                    f"{rows[-1].get('warnings') or ''}")
                _free_memory()
            self.result["throughput"] = {"rows": rows}
            self.save()
        return {"rows": rows, "summary": _throughput_summary(rows)}

    # -- 3. packing --------------------------------------------------------------------
    def packing(self) -> dict:
        s = self.sizes
        trial = self.engine_trial("resnet20", True, 0, s.packing_steps_per_epoch,
                                  iterations=s.packing_iterations)
        folder = Path(tempfile.mkdtemp(prefix="resweep-packing-"))
        config = folder / "trial.json"
        config.write_text(json.dumps(trial.to_dict()))
        rows, estimate = [], estimate_trial_memory(trial).total
        for procs in s.packing_procs:
            if self.left() < 10 + 3 * procs:
                self.result["sections_skipped"][f"packing_{procs}"] = "time budget"
                break
            rows.append(self._pack(procs, config, folder))
            rows[-1]["estimated_bytes"] = procs * estimate
            check = check_gpu_packing([dataclasses.replace(trial, resources=Resources(
                gpu=1 / procs))] * procs, self.result["meta"].get("device_memory_bytes"),
                refuse=False)
            rows[-1]["packing_check"] = check.verdict
            log(f"  {procs} procs: {rows[-1]['total_images_per_s']} img/s in total")
            self.result["packing"] = {"rows": rows}
            self.save()
        one = rows[0]["total_images_per_s"] if rows else None
        for row in rows:
            row["gain_vs_one"] = round(row["total_images_per_s"] / one, 2) if one else None
        return {"model": "resnet20 graph bf16 batch %d" % s.batch, "rows": rows,
                "command": "python -m orchestrator.cli train --config trial.json --quiet "
                           "--out result.json"}

    def _pack(self, procs: int, config: Path, folder: Path) -> dict:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        outs = [folder / f"p{procs}-{i}.json" for i in range(procs)]
        probe = _MemoryProbe(self.device)
        began = time.perf_counter()
        popen = [subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "train",
                                   "--config", str(config), "--quiet", "--out", str(out)]
                                  + (["--device", "cpu", "--threads", "1"] if self.smoke else []),
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for out in outs]
        try:
            logs = [p.communicate(timeout=max(30, self.left()))[0] for p in popen]
        finally:                        # a timeout or an error must not leave them running
            for p in popen:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            used = probe.stop()
        wall = time.perf_counter() - began
        per_proc, trained = [], 0
        for p, out, text in zip(popen, outs, logs):
            if p.returncode != 0 or not out.is_file():
                raise RuntimeError(f"a packed `resweep train` failed ({p.returncode}): {text[-800:]}")
            history = json.loads(out.read_text())["history"]
            rates = [h["images_per_s"] for h in history]
            middle = rates[1:-1] or rates          # first: capture; last: others finishing
            per_proc.append(round(statistics.median(middle), 1))
            trained += history[-1]["iteration"] * self.sizes.batch
        return {"procs": procs, "per_proc_images_per_s": per_proc,
                "total_images_per_s": round(sum(per_proc), 1), "wall_s": round(wall, 1),
                "wall_images_per_s": round(trained / wall, 1),
                "measured_device_bytes": used}

    # -- 4. correctness ----------------------------------------------------------------
    def correctness(self) -> dict:
        s = self.sizes
        trials, source = _study_trials(ROOT / "search_spaces" / "degradation-quick.yaml")
        fmnist = Path(self.args.fmnist)
        root = str(fmnist) if fmnist.is_dir() else None     # else the usual places
        runs = []
        for trial in trials:
            for graph in (True, False):
                if self.left() < 10:
                    break
                data = dataclasses.replace(trial.data, root=root,
                                           **({"train_size": s.correctness_train_size}
                                              if s.correctness_train_size else {}),
                                           **({"test_size": s.correctness_test_size}
                                              if s.correctness_test_size else {}))
                train = dataclasses.replace(trial.train, epochs=s.correctness_epochs,
                                            eval_every=s.correctness_epochs,
                                            precision="bf16", cuda_graph=graph,
                                            threads=1 if self.smoke else None,
                                            device="cpu" if self.smoke else "auto")
                run = dataclasses.replace(trial, data=data, train=train)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    began = time.perf_counter()
                    result = train_trial(run)
                final = result.final
                runs.append({"trial": trial.name, "path": "graph" if graph else "eager",
                             "status": result.status, "epochs": len(result.history),
                             "iterations": final.get("iteration"),
                             "train_error": final.get("train_error"),
                             "val_error": final.get("val_error"),
                             "test_error": final.get("test_error"),
                             "seconds": round(time.perf_counter() - began, 1),
                             "warnings": sorted({str(w.message)[:200] for w in caught})})
                log(f"  {trial.name} {runs[-1]['path']}: train {runs[-1]['train_error']} "
                    f"test {runs[-1]['test_error']}")
        return {"study": source, "precision": "bf16", "epochs": s.correctness_epochs,
                "runs": runs, "comparison": _compare_paths(runs)}

    # -- 5. the degradation study's estimated time -------------------------------------
    def degradation_estimate(self) -> dict:
        rows = self.result.get("throughput", {}).get("rows", [])
        rate = {(r["net"], r["path"]): r["images_per_s"] for r in rows if "images_per_s" in r}
        trials, source = _study_trials(ROOT / "search_spaces" / "degradation.yaml")
        packing = self.result.get("packing", {}).get("rows", [])
        return estimate_study_time(trials, rate, packing, source)

    # -- 7. compile ----------------------------------------------------------------------
    def compiled(self) -> dict:
        s = self.sizes
        trial = self.engine_trial("resnet20", True, s.graph_epochs, s.steps_per_epoch)
        trial = dataclasses.replace(trial, train=dataclasses.replace(trial.train, compile=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            began = time.perf_counter()
            result = train_trial(trial)
        rates = [h["images_per_s"] for h in result.history]
        return {"net": "resnet20", "path": "engine-graph+compile",
                "images_per_s": round(statistics.median(rates[1:] or rates), 1),
                "epoch_images_per_s": [round(r, 1) for r in rates],
                "trial_s": round(time.perf_counter() - began, 1),
                "warnings": sorted({str(w.message)[:300] for w in caught})}

    def run(self) -> dict:
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            self.section("capture_checks", 10, self.capture_checks)
        else:
            self.result["sections_skipped"]["capture_checks"] = \
                "no CUDA device: GraphStep ran its body without capture"
            if self.smoke:   # the same code on the CPU: GraphStep runs its body eagerly
                self.section("capture_checks", 5, self.capture_checks)
        self.section("throughput", 60 if on_gpu else 5, self.throughput)
        self.section("packing", 30 if on_gpu else 5, self.packing)
        self.section("correctness", 30 if on_gpu else 5, self.correctness)
        self.section("degradation_estimate", 1, self.degradation_estimate)
        self.result["targets"] = _targets(self.result)
        self.save()
        if on_gpu:
            self.section("compile", 60, self.compiled)
        else:   # inductor's C++ build on a CPU takes minutes: not a smoke test
            self.result["sections_skipped"]["compile"] = "CPU: only measured on a GPU"
            self.save()
        return self.result


# -- helpers ------------------------------------------------------------------------------
def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class _MemoryProbe:
    """Polls the device's free memory from this process while packed trials run; the
    largest drop below the free memory at the start is what they used together (CUDA
    contexts included)."""

    def __init__(self, device: torch.device, every_s: float = 0.2):
        self.device, self.every_s = device, every_s
        self.min_free: int | None = None
        self.start_free: int | None = None
        self._stop = threading.Event()
        if device.type == "cuda":
            self.start_free = torch.cuda.mem_get_info()[0]
            self.min_free = self.start_free
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self.min_free = min(self.min_free, torch.cuda.mem_get_info()[0])

    def stop(self) -> int | None:
        if self.device.type != "cuda":
            return None
        self._stop.set()
        self._thread.join()
        return self.start_free - self.min_free


def _study_trials(path: Path) -> tuple[list[TrialConfig], str]:
    from search_spaces import expand_study, load_study  # pydantic + pyyaml

    return expand_study(load_study(str(path))), str(path.relative_to(ROOT))


def _throughput_summary(rows: list[dict]) -> dict:
    """Per net: engine graph / eager, reference eager (bf16cl, fp32) and the ratios."""
    summary = {}
    for name in NETS:
        rate = {r["path"]: r["images_per_s"] for r in rows
                if r.get("net") == name and "images_per_s" in r}
        references = [rate[k] for k in ("reference-bf16cl", "reference-fp32") if k in rate]
        entry = {"engine_graph": rate.get("engine-graph"),
                 "engine_eager": rate.get("engine-eager"),
                 "engine_eval": rate.get("engine-eval"),
                 "reference_bf16cl": rate.get("reference-bf16cl"),
                 "reference_fp32": rate.get("reference-fp32")}
        if entry["engine_graph"] and references:
            entry["graph_vs_best_reference"] = round(entry["engine_graph"] / max(references), 2)
        if entry["engine_graph"] and entry["reference_bf16cl"]:
            entry["graph_vs_reference_bf16cl"] = round(entry["engine_graph"] /
                                                       entry["reference_bf16cl"], 2)
        if entry["engine_graph"] and entry["engine_eager"]:
            entry["graph_vs_engine_eager"] = round(entry["engine_graph"] / entry["engine_eager"], 2)
        if entry["engine_eager"] and entry["reference_bf16cl"]:
            entry["engine_eager_vs_reference_bf16cl"] = round(
                entry["engine_eager"] / entry["reference_bf16cl"], 2)
        summary[name] = entry
    return summary


def _compare_paths(runs: list[dict]) -> list[dict]:
    """Graph minus eager, per trial; 'within noise' = every error within 2 points, and
    the test-error gap within 4 binomial standard errors of the test set as well."""
    by_trial: dict[str, dict] = {}
    for run in runs:
        by_trial.setdefault(run["trial"], {})[run["path"]] = run
    out = []
    for name, paths in by_trial.items():
        if {"graph", "eager"} - set(paths):
            continue
        g, e = paths["graph"], paths["eager"]
        diff = {k: round(g[k] - e[k], 4) for k in ("train_error", "val_error", "test_error")
                if g.get(k) is not None and e.get(k) is not None}
        out.append({"trial": name, "graph_minus_eager": diff,
                    "within_noise": all(abs(v) <= 0.02 for v in diff.values())})
    return out


def estimate_study_time(trials: list[TrialConfig], rate: dict, packing: list[dict],
                        source: str, startup_s: float | None = None) -> dict:
    """Minutes for `trials` on one GPU from measured images/s (see the module docstring).
    Epochs and evaluations assume CIFAR-10's split (50,000 training, 10,000 test images),
    as in degradation.yaml (only val_size is read from the trials)."""
    measured = {NETS[n][0]: rate[(n, "engine-graph")] for n in ("resnet20", "resnet56", "resnet110")
                if (n, "engine-graph") in rate}
    if len(measured) < 2:
        return {"error": "needs engine-graph rates of at least two ResNets"}
    # seconds per image = a + b x depth, least squares through the measured ResNets
    depths = sorted(measured)
    xs, ys = depths, [1 / measured[d] for d in depths]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    plain_factor = (rate[("resnet56", "engine-graph")] / rate[("plain56", "engine-graph")]
                    if ("plain56", "engine-graph") in rate and ("resnet56", "engine-graph") in rate
                    else 1.0)
    eval_rates = {NETS[n][0]: rate[(n, "engine-eval")] for n in ("resnet20", "resnet56", "resnet110")
                  if (n, "engine-eval") in rate}
    one = next((r for r in packing if r["procs"] == 1), None)
    gains = {1: 1.0}
    if one:
        gains.update({r["procs"]: r["total_images_per_s"] / one["total_images_per_s"]
                      for r in packing})
    if startup_s is None:
        # a lone `resweep train` process: wall time minus its training time (start-up,
        # data, capture, one small test evaluation)
        startup_s = 5.0
        if one:
            trained_images = one["wall_images_per_s"] * one["wall_s"]
            startup_s = one["wall_s"] - trained_images / one["total_images_per_s"]
        startup_s = max(2.0, min(startup_s, 30.0))
    rows = []
    for t in trials:
        depth = t.model.depth
        seconds_per_image = (a + b * depth) * (1.0 if t.model.residual else plain_factor)
        iterations = t.train.iterations or 0
        train_images = iterations * t.train.batch_size
        steps_per_epoch = (50_000 - t.data.val_size) // t.train.batch_size
        epochs = math.ceil(iterations / steps_per_epoch)
        test_evals = sum(1 for e in range(1, epochs + 1)
                         if e % t.train.eval_every == 0 or e == epochs)
        eval_images = epochs * t.data.val_size + test_evals * 10_000
        nearest = min(eval_rates, key=lambda d: abs(d - depth)) if eval_rates else None
        eval_rate = eval_rates[nearest] * nearest / depth if nearest else 3 / seconds_per_image
        alone = train_images * seconds_per_image + eval_images / eval_rate + startup_s
        rows.append({"trial": t.name, "iterations": iterations,
                     "train_images_per_s": round(1 / seconds_per_image, 1),
                     "eval_images": eval_images, "alone_s": round(alone, 1)})
    gpu = trials[0].resources.gpu
    slots = max(1, math.floor(1 / gpu + 1e-9)) if 0 < gpu <= 1 else 1
    alone = [r["alone_s"] for r in rows]
    in_order = shared_gpu_makespan(alone, slots, gains)
    longest_first = shared_gpu_makespan(sorted(alone, reverse=True), slots, gains)
    return {"study": source, "trials": rows, "slots_per_gpu": slots,
            "packing_gains": {k: round(v, 2) for k, v in sorted(gains.items())},
            "startup_s": round(startup_s, 1),
            "serial_minutes": round(sum(alone) / 60, 1),
            "packed_minutes": round(in_order / 60, 1),
            "packed_minutes_longest_first": round(longest_first / 60, 1),
            "assumptions": "step time linear in depth through the measured ResNets "
                           "(graph, bf16, batch 128); plain nets scaled by plain-56/ResNet-56; "
                           "eval at the measured eager eval rate (batch 1024) scaled by "
                           "depth; k trials sharing the GPU each run at gain(k)/k of their "
                           "lone speed, gain(k) measured with ResNet-20 (deeper nets keep "
                           "the GPU busier, so their gain is likely smaller); trials start in "
                           "the study's order as slots free up (packed_minutes), or deepest "
                           "first (packed_minutes_longest_first); one GPU"}


def shared_gpu_makespan(alone_seconds: list[float], slots: int, gains: dict[int, float]) -> float:
    """Seconds until the last trial ends when up to `slots` trials share one GPU.

    alone_seconds: each trial's time alone on the GPU, in start order. While k trials run,
    each advances at gain(k)/k of its lone speed (gain(1) = 1; between measured k,
    linear; beyond the largest, its gain). A pending trial starts when one ends.
    """
    def gain(k: int) -> float:
        known = sorted(gains)
        if k in gains:
            return gains[k]
        if k > known[-1]:
            return gains[known[-1]]
        low = max(x for x in known if x < k)
        high = min(x for x in known if x > k)
        return gains[low] + (gains[high] - gains[low]) * (k - low) / (high - low)

    pending = list(alone_seconds)
    running: list[float] = []          # remaining lone-seconds of work
    clock = 0.0
    while pending or running:
        while pending and len(running) < slots:
            running.append(pending.pop(0))
        speed = gain(len(running)) / len(running)     # lone-seconds per second, each
        step = min(running) / speed
        clock += step
        running = [r - step * speed for r in running]
        running = [r for r in running if r > 1e-9]
    return clock


def _targets(result: dict) -> dict:
    summary = result.get("throughput", {}).get("summary", {})
    r56 = summary.get("resnet56", {})
    ratio = r56.get("graph_vs_best_reference")
    packing = {r["procs"]: r for r in result.get("packing", {}).get("rows", [])}
    gain = packing[4]["gain_vs_one"] if 4 in packing else None
    minutes = result.get("degradation_estimate", {}).get("packed_minutes")
    return {
        "resnet56_graph_vs_reference": {"value": ratio, "target": ">= 4",
                                        "met": ratio is not None and ratio >= 4.0},
        "packing4_gain": {"value": gain, "target": ">= 2.5",
                          "met": gain is not None and gain >= 2.5},
        "degradation_minutes": {"value": minutes, "target": "<= 20",
                                "met": minutes is not None and minutes <= 20.0}}


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
