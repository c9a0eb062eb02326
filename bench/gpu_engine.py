"""bench/gpu.py's engine sections: throughput, correctness, compile (section 1, the
capture checks, is bench/gpu_checks.py).

Each section is a function of the running `Bench` (bench/gpu.py: its sizes, device, time
budget and the JSON so far) that returns the section's JSON. See bench/gpu.py's docstring
for what each measures.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import statistics
import time
import warnings
from pathlib import Path

import torch

from bench.gpu_estimate import NETS, ROOT, compare_paths, study_trials, throughput_summary
from models import build_model
from models.config import ModelConfig
from workers.config import DataConfig, Resources, TrainConfig, TrialConfig
from workers.engine import evaluate
from workers.memory import estimate_trial_memory
from workers.trial import train_trial


# -- 2. throughput ------------------------------------------------------------------------
def net_config(bench, name: str) -> ModelConfig:
    """One of NETS at the bench's width and image size, 3 channels, 10 classes."""
    depth, residual = NETS[name]
    return ModelConfig(family="cifar", depth=depth, residual=residual,
                       width=bench.sizes.width, in_channels=3,
                       image_size=bench.sizes.image, num_classes=10)


def engine_trial(bench, name: str, graph: bool, epochs: int, steps_per_epoch: int,
                 iterations: int | None = None) -> TrialConfig:
    s = bench.sizes
    train = TrainConfig(epochs=None if iterations else epochs, iterations=iterations,
                        batch_size=s.batch, lr=0.05, precision="bf16",
                        eval_every=10_000, cuda_graph=graph, probes=False,
                        threads=1 if bench.smoke else None,
                        device="cpu" if bench.smoke else "auto")
    data = DataConfig(dataset="synthetic", train_size=steps_per_epoch * s.batch,
                      val_size=0, test_size=256, augment=True)
    return TrialConfig(name=f"bench-{name}-{'graph' if graph else 'eager'}",
                       model=net_config(bench, name), data=data, train=train, seed=0,
                       resources=Resources(cpu=1, gpu=0.25), study="bench-gpu")


def engine_rate(bench, name: str, graph: bool) -> dict:
    s = bench.sizes
    epochs = s.graph_epochs if graph else s.eager_epochs
    trial = engine_trial(bench, name, graph, epochs, s.steps_per_epoch)
    if bench.device.type == "cuda":
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
           # what the trial really ran: a failed capture falls back to eager in GraphStep
           "step_class": result.step_class, "captured": result.captured,
           "warnings": sorted({str(w.message)[:300] for w in caught})}
    if bench.device.type == "cuda":
        estimate = estimate_trial_memory(trial)
        row["memory"] = {
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
            # after train_trial returned, before any gc.collect(): the trial's graph pool
            # must be released already (the step is closed and has no reference cycle)
            "reserved_after_trial_bytes": torch.cuda.memory_reserved(),
            # the estimate without the allowances that the allocator does not see
            "estimate_allocator_bytes": estimate.allocator,
            "estimate": estimate.to_dict()}
    return row


def eval_rate(bench, name: str) -> dict:
    """Eager evaluation (batch 1024, bf16, channels_last) images/s: the eval cost."""
    device, s = bench.device, bench.sizes
    model = build_model(net_config(bench, name)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    batch = 1024 if not bench.smoke else 64
    images = torch.randn(batch, 3, s.image, s.image, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    data = [(images, labels)] * s.eval_batches
    evaluate(model, data[:1], device, "bf16")           # warm-up (cuDNN autotuning)
    bench.sync()
    began = time.perf_counter()
    evaluate(model, data, device, "bf16")               # ends with a host read
    seconds = time.perf_counter() - began
    return {"net": name, "path": "engine-eval", "images_per_s":
            round(batch * len(data) / seconds, 1)}


def load_reference(bench):
    """The reference eager loop's module (its `train_throughput`), from its copy."""
    path = Path(bench.args.reference)
    if not path.is_file():
        raise FileNotFoundError(f"reference loop {path} not found: copy "
                                "../shared/reference/gpu_anchor.py there (git-ignored)")
    spec = importlib.util.spec_from_file_location("gpu_anchor", path)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    return anchor


def reference_rate(bench, anchor, name: str, mode: str) -> dict:
    s = bench.sizes
    # on the CPU smoke run its nets at 20 layers (the reference's width is fixed)
    ref_name = name if not bench.smoke else name.replace("110", "20").replace("56", "20")
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    # as the reference's main() sets them for its single-trial rows
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        r = anchor.train_throughput(ref_name, mode, s.batch, s.reference_steps,
                                    s.reference_warmup, bench.device)
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = flags
    return {"net": name, "path": f"reference-{mode}", "images_per_s": r["img_per_s"],
            "reference_net": ref_name, "raw": r}


def throughput(bench) -> dict:
    """Per net, back to back on the same GPU: engine graph, engine eager, eval, and the
    reference loop in bf16 + channels_last and in fp32."""
    rows = []
    try:
        anchor = load_reference(bench)
    except Exception as err:  # noqa: BLE001 - the engine rows are still worth having
        anchor = None
        rows.append({"path": "reference", "error": f"{type(err).__name__}: {err}"[:500]})
    for name in NETS:
        jobs = [lambda: engine_rate(bench, name, True), lambda: engine_rate(bench, name, False),
                lambda: eval_rate(bench, name)]
        if anchor is not None:
            jobs += [lambda m=m: reference_rate(bench, anchor, name, m)
                     for m in ("bf16cl", "fp32")]
        for job in jobs:
            if bench.left() < 20:
                break
            rows.append(job())
            bench.log(f"  {name} {rows[-1]['path']}: {rows[-1]['images_per_s']} img/s "
                f"{rows[-1].get('warnings') or ''}")
            bench.free_memory()
        bench.result["throughput"] = {"rows": rows}
        bench.save()
    return {"rows": rows, "summary": throughput_summary(rows)}


# -- 4. correctness -----------------------------------------------------------------------
def correctness(bench) -> dict:
    s = bench.sizes
    trials, source = study_trials(ROOT / "search_spaces" / "degradation-quick.yaml")
    fmnist = Path(bench.args.fmnist)
    root = str(fmnist) if fmnist.is_dir() else None     # else the usual places
    runs = []
    for trial in trials:
        for graph in (True, False):
            if bench.left() < 10:
                break
            data = dataclasses.replace(trial.data, root=root,
                                       **({"train_size": s.correctness_train_size}
                                          if s.correctness_train_size else {}),
                                       **({"test_size": s.correctness_test_size}
                                          if s.correctness_test_size else {}))
            train = dataclasses.replace(trial.train, epochs=s.correctness_epochs,
                                        eval_every=s.correctness_epochs,
                                        precision="bf16", cuda_graph=graph,
                                        threads=1 if bench.smoke else None,
                                        device="cpu" if bench.smoke else "auto")
            run = dataclasses.replace(trial, data=data, train=train)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                began = time.perf_counter()
                result = train_trial(run)
            final = result.final
            runs.append({"trial": trial.name, "path": "graph" if graph else "eager",
                         "step_class": result.step_class, "captured": result.captured,
                         "status": result.status, "epochs": len(result.history),
                         "iterations": final.get("iteration"),
                         "train_error": final.get("train_error"),
                         "val_error": final.get("val_error"),
                         "test_error": final.get("test_error"),
                         "seconds": round(time.perf_counter() - began, 1),
                         "warnings": sorted({str(w.message)[:200] for w in caught})})
            bench.log(f"  {trial.name} {runs[-1]['path']}: train {runs[-1]['train_error']} "
                f"test {runs[-1]['test_error']}")
    return {"study": source, "precision": "bf16", "epochs": s.correctness_epochs,
            "runs": runs, "comparison": compare_paths(runs)}


# -- 7. compile ---------------------------------------------------------------------------
def compiled(bench) -> dict:
    s = bench.sizes
    trial = engine_trial(bench, "resnet20", True, s.graph_epochs, s.steps_per_epoch)
    trial = dataclasses.replace(trial, train=dataclasses.replace(trial.train, compile=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        began = time.perf_counter()
        result = train_trial(trial)
    rates = [h["images_per_s"] for h in result.history]
    return {"net": "resnet20", "path": "engine-graph+compile",
            "step_class": result.step_class, "captured": result.captured,
            "images_per_s": round(statistics.median(rates[1:] or rates), 1),
            "epoch_images_per_s": [round(r, 1) for r in rates],
            "trial_s": round(time.perf_counter() - began, 1),
            "warnings": sorted({str(w.message)[:300] for w in caught})}
