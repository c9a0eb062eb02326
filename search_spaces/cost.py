"""How long a trial will take: a cost model from MACs, calibrated on this machine.

Training one image costs about 3x the forward multiply-accumulates (forward, and a
backward pass of about twice the forward); evaluating one costs 1x. So

    seconds = (3 x MACs x trained images + MACs x evaluated images) / throughput + startup

`throughput` (multiply-accumulates per second) is measured once per device and torch
thread count by timing a few forward/backward/SGD steps of a small CIFAR-style ResNet
(depth 20, width 0.5, 28x28, batch 128; the median of 5 steps, ~1 s), and cached in
~/.cache/resweep/calibration.json ($RESWEEP_CACHE_DIR overrides the folder). Layers of the same width run at about the same
MACs/s whatever the depth, so one small net calibrates the family; wider nets run
somewhat faster per MAC (the estimate is then on the safe side).

GPU trials are calibrated on this machine's GPU (eager fp32 steps; for trials that use
CUDA graphs with bf16 scaled by the 4.2x gain the H200 reference measured); on a machine
without a GPU they use a reference throughput measured on one H200 (ResNet-20, batch 128:
15k images/s eager, 63.5k with CUDA graphs + bf16) and the measured gain of packing several trials on one GPU (1/2/4/8 trials give
1.0/2.0/2.8/3.0x the images/s of one).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from models.config import ModelConfig
from workers.config import TrialConfig
from workers.data.datasets import split_sizes

STARTUP_SECONDS = 5.0         # a trial's process start, imports and data load (measured)
_TRAIN_FACTOR = 3.0           # forward + backward ~ 3x forward MACs
_REFERENCE_RESNET20_MACS = 40_551_040
REFERENCE_GPU = {             # MACs/s of one trial alone on an H200 (measured)
    "graph-bf16": 3 * _REFERENCE_RESNET20_MACS * 63_500,
    "eager": 3 * _REFERENCE_RESNET20_MACS * 15_000,
}
_PACKING_GAIN = {1: 1.0, 2: 2.0, 4: 2.8, 8: 3.0}   # total images/s vs one trial alone
_CALIBRATION_MODEL = ModelConfig(family="cifar", depth=20, width=0.5, in_channels=1,
                                 image_size=28, num_classes=10)
_CALIBRATION_BATCH = 128
_CALIBRATION_STEPS = 5


@dataclass(frozen=True)
class Calibration:
    """Measured training throughput of one device at one thread count."""

    device: str          # "cpu" or a GPU name, or "reference H200 ..."
    threads: int
    macs_per_s: float    # multiply-accumulates per second, training (3x forward counted)
    images_per_s: float  # of the calibration net
    measured: str        # ISO time, or "reference"


def default_threads() -> int:
    """torch's thread count in a fresh process here (what a trial with train.threads null
    gets), without importing torch when it can be helped: this process's own count if
    torch is already imported, else the count recorded in the calibration cache for this
    host, CPU count and OMP/MKL_NUM_THREADS, else torch is asked once and the answer is
    recorded (so `resweep plan` stays torch-free after its first run on a machine)."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    import platform

    key = (f"torch_default_threads/{platform.node()}/cpus={os.cpu_count()}/"
           f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}/"
           f"MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS', '')}")
    if key in _DEFAULT_THREADS:   # read the file once per process, not once per trial
        return _DEFAULT_THREADS[key]
    cache = _read_cache()
    if not isinstance(cache.get(key), int):
        import torch

        cache[key] = torch.get_num_threads()
        _write_cache(cache)
    _DEFAULT_THREADS[key] = cache[key]
    return cache[key]


_DEFAULT_THREADS: dict[str, int] = {}


def _read_cache() -> dict:
    path = cache_path()
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(cache: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=2, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home still gets an estimate


def cache_path() -> Path:
    folder = os.environ.get("RESWEEP_CACHE_DIR") or os.path.expanduser("~/.cache/resweep")
    return Path(folder) / "calibration.json"


def calibrate(device: str = "cpu", threads: int = 1, refresh: bool = False) -> Calibration:
    """The cached calibration for (device, threads), measured now if missing (~1 s)."""
    key = f"{device}/threads={threads}"
    cache = _read_cache()
    if not refresh and key in cache:
        try:
            return Calibration(**cache[key])
        except TypeError:
            pass
    calibration = _measure(device, threads)
    cache[key] = asdict(calibration)
    _write_cache(cache)
    return calibration


def _measure(device: str, threads: int) -> Calibration:
    """Median time of forward/backward/step of the calibration net (the median shrugs
    off the odd step slowed by other work on a shared machine)."""
    import torch

    from models import build_model
    from models.complexity import model_stats

    macs = model_stats(_CALIBRATION_MODEL).macs
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        torch_device = torch.device(device)
        model = build_model(_CALIBRATION_MODEL).to(torch_device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(_CALIBRATION_BATCH, 1, 28, 28, generator=gen).to(torch_device)
        y = torch.randint(0, 10, (_CALIBRATION_BATCH,), generator=gen).to(torch_device)

        def step():
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

        for _ in range(2):
            step()
        _sync(torch_device)
        times = []
        for _ in range(_CALIBRATION_STEPS):
            start = time.perf_counter()
            step()
            _sync(torch_device)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    images_per_s = _CALIBRATION_BATCH / statistics.median(times)
    name = device if device == "cpu" else torch.cuda.get_device_name(torch_device)
    return Calibration(device=name, threads=threads,
                       macs_per_s=_TRAIN_FACTOR * macs * images_per_s,
                       images_per_s=images_per_s,
                       measured=time.strftime("%Y-%m-%dT%H:%M:%S"))


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def gpu_calibration(trial: TrialConfig, refresh: bool = False) -> Calibration:
    """Measured on this machine's GPU if it has one, else the H200 reference."""
    import torch

    graph = trial.train.cuda_graph and trial.train.precision == "bf16"
    key = "graph-bf16" if graph else "eager"
    if torch.cuda.is_available():
        measured = calibrate("cuda", threads=1, refresh=refresh)  # eager fp32 steps
        if not graph:
            return measured
        # The engine captures bf16 steps in a CUDA graph; a small net's eager steps are
        # launch-bound, so scale by the gain measured on the H200 (63.5k vs 15k images/s).
        gain = REFERENCE_GPU["graph-bf16"] / REFERENCE_GPU["eager"]
        return dataclasses.replace(
            measured, device=f"{measured.device} (eager x {gain:.1f} CUDA-graph gain)",
            macs_per_s=measured.macs_per_s * gain, images_per_s=measured.images_per_s * gain)
    macs_per_s = REFERENCE_GPU[key]
    return Calibration(device=f"reference H200 ({key}; no GPU here)", threads=0,
                       macs_per_s=macs_per_s,
                       images_per_s=macs_per_s / (_TRAIN_FACTOR * _REFERENCE_RESNET20_MACS),
                       measured="reference")


def packing_share(gpu: float) -> float:
    """Fraction of a lone trial's speed that each of 1/gpu trials on one GPU gets."""
    if gpu <= 0 or gpu >= 1:
        return 1.0
    n = max(1, round(1 / gpu))
    known = sorted(_PACKING_GAIN)
    lower = max(k for k in known if k <= n) if n >= 1 else 1
    upper = min((k for k in known if k >= n), default=known[-1])
    if upper == lower:
        gain = _PACKING_GAIN[lower] if n <= known[-1] else _PACKING_GAIN[known[-1]]
    else:
        t = (n - lower) / (upper - lower)
        gain = _PACKING_GAIN[lower] + t * (_PACKING_GAIN[upper] - _PACKING_GAIN[lower])
    return gain / n


@dataclass(frozen=True)
class TrialCost:
    """The estimate for one trial."""

    iterations: int        # optimizer steps
    epochs: int
    train_images: int      # images trained on (iterations x batch)
    eval_images: int       # images evaluated (validation every epoch, test every k)
    seconds: float         # estimated wall time of the trial at its resources
    device_seconds: float  # seconds x CPUs (CPU trials) or x GPU share (GPU trials)


def training_split(trial: TrialConfig) -> tuple[int, int]:
    """(training images per epoch, test images) for this trial's data settings."""
    sizes = split_sizes(trial.data)
    return sizes.train, sizes.test


def estimate(trial: TrialConfig, macs: int, calibration: Calibration) -> TrialCost:
    """Seconds for `trial` given its forward MACs per image and a calibration."""
    train_images, test_images = training_split(trial)
    batch = trial.train.batch_size
    on_gpu = trial.resources.gpu > 0
    drop_last = on_gpu and trial.train.cuda_graph
    steps_per_epoch = max(1, train_images // batch if drop_last else -(-train_images // batch))
    if trial.train.iterations is not None:
        iterations = trial.train.iterations
        epochs = math.ceil(iterations / steps_per_epoch)
    else:
        epochs = trial.train.epochs or 1
        iterations = epochs * steps_per_epoch
    tests = len({e for e in range(1, epochs + 1) if e % trial.train.eval_every == 0} | {epochs})
    eval_images = epochs * trial.data.val_size + tests * test_images
    trained = iterations * batch
    rate = calibration.macs_per_s
    if on_gpu:
        rate *= packing_share(trial.resources.gpu)
    seconds = STARTUP_SECONDS + (_TRAIN_FACTOR * trained + eval_images) * macs / rate
    share = trial.resources.gpu if on_gpu else trial.resources.cpu
    return TrialCost(iterations=iterations, epochs=epochs, train_images=trained,
                     eval_images=eval_images, seconds=seconds,
                     device_seconds=seconds * share)


def wall_seconds(durations: list[float], slots: int) -> float:
    """Wall time of running `durations` in order on `slots` parallel slots (Ray starts
    the next pending trial whenever one finishes)."""
    if not durations:
        return 0.0
    import heapq

    free = [0.0] * max(1, slots)
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + d)
    return max(free)


# Any throughput gives `estimate`'s image counts; trial_macs uses only those.
_UNIT_RATE = Calibration(device="none", threads=0, macs_per_s=1.0, images_per_s=1.0,
                         measured="none")


def trial_macs(trial: TrialConfig, macs: int) -> float:
    """Multiply-accumulates `trial` computes in all: 3 x `macs` (its forward MACs per
    image) per trained image + `macs` per evaluated image, the work `estimate` divides by
    a throughput. Needs no calibration, so `resweep run` orders its trials longest first
    and weights its ETA by it without measuring anything."""
    cost = estimate(trial, macs, _UNIT_RATE)
    return (_TRAIN_FACTOR * cost.train_images + cost.eval_images) * macs
