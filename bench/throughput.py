"""Training throughput of the resweep engine against plain eager PyTorch loops. Prints JSON.

All train the same network (`models.build_model`, same seed) at the same batch size on the
same on-device synthetic uint8 data, normalised and augmented (pad-4 crop + flip) on the
device, in one process. Two plain loops, side by side with the engine:

- `bare`: textbook eager fp32 in the default NCHW layout, whatever the engine does. The
  engine's speed-up over it (`ratio`) is what its defaults buy (channels_last for conv
  nets, on CUDA also bf16 and the CUDA graph); on the CPU the target is >= 1.25x (issue 15).
- `matched`: the same loop in the engine's layout and precision, so `matched.ratio` is the
  engine's own overhead (metric accumulation, lr schedule, divergence checks); >= 0.95x
  on the CPU (issue 4).

Interleaving: the engine (`workers.train_trial`) runs `--repeats` + 1 epochs of `--steps`
steps; at the end of every epoch its report callback runs one block of `--steps` steps of
each plain loop. So each engine epoch (its own `images_per_s`) is paired with plain blocks
measured right after it, under the same machine load; epoch 1 and the blocks after it are
warm-up. A ratio is the median of the per-pair ratios; on the CPU, `cpu_time_ratio` is the
same from the process's CPU time (plain CPU s / engine CPU s per pair, the last epoch left
out because its report comes after the probes), which contention on a shared machine
disturbs far less than wall time. `end_to_end` divides all images the engine trained by
the wall time of the whole `train_trial` call (data set-up, evaluation, reports, probes;
the plain blocks subtracted) and compares it with the bare loop's median.

    python bench/throughput.py                                 # CPU defaults (~1 min)
    python bench/throughput.py --depth 56                      # the issue-15 measurement
    python bench/throughput.py --device cuda --depth 56 --width 1 --channels 3 \
        --image-size 32 --steps 200 --precision bf16           # a GPU box with torch only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import build_model  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from workers.config import DataConfig, TrainConfig, TrialConfig  # noqa: E402
from workers.engine import pick_device, to_layout, uses_channels_last  # noqa: E402
from workers.data.arrays import make_synthetic  # noqa: E402
from workers.results import FINISHED  # noqa: E402
from workers.trial import train_trial  # noqa: E402


CPU_TARGET = 1.25   # engine over the bare loop on the CPU (issue 15)


class PlainLoop:
    """Textbook eager training on on-device uint8 data (a baseline).

    matched: False = the bare loop (NCHW, fp32); True = the engine's layout and precision.
    """

    def __init__(self, model_cfg: ModelConfig, images: torch.Tensor, labels: torch.Tensor,
                 args: argparse.Namespace, device: torch.device, matched: bool):
        torch.manual_seed(args.seed)
        self.model = build_model(model_cfg).to(device)
        self.channels_last = matched and uses_channels_last(self.model, device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.layout = "channels_last" if self.channels_last else "nchw"
        self.precision = args.precision if matched else "fp32"
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9,
                                   weight_decay=1e-4)
        as_float = images.float()
        self.mean = as_float.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.std = as_float.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.gen = torch.Generator(device=device).manual_seed(args.seed)
        self.images, self.labels, self.device = images, labels, device
        self.batch, self.bf16 = args.batch, self.precision == "bf16"

    def step(self) -> torch.Tensor:
        n, size, batch, device = self.images.shape[0], self.images.shape[-1], self.batch, self.device
        index = torch.randint(0, n, (batch,), generator=self.gen, device=device)
        x = (self.images[index].float() - self.mean) / self.std
        x = F.pad(x, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,), generator=self.gen, device=device).tolist()
        x = x[:, :, dy:dy + size, dx:dx + size]
        flip = torch.rand(batch, generator=self.gen, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = to_layout(x, self.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(x), self.labels[index])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def run(self, steps: int) -> tuple[float, float, float]:
        """(images/s, wall seconds, CPU seconds of this process) of `steps` steps."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(steps):
            loss = self.step()
        loss.item()  # host sync
        seconds = time.perf_counter() - started
        return steps * self.batch / seconds, seconds, time.process_time() - cpu_started


class Blocks:
    """One plain loop's measured blocks, each paired with the engine epoch before it."""

    def __init__(self, loop: PlainLoop):
        self.loop = loop
        self.rates: list[float] = []
        self.seconds: list[float] = []
        self.cpu: list[float] = []

    def run(self, steps: int) -> None:
        rate, seconds, cpu = self.loop.run(steps)
        self.rates.append(rate)
        self.seconds.append(seconds)
        self.cpu.append(cpu)

    def summary(self, engine_rates: list[float], engine_cpu: list[float],
                on_cpu: bool) -> dict:
        pairs = [e / p for e, p in zip(engine_rates[1:], self.rates[1:])]  # 1: warm-up
        return {
            "layout": self.loop.layout, "precision": self.loop.precision,
            "images_per_s": [round(r, 1) for r in self.rates[1:]],
            "median": round(statistics.median(self.rates[1:]), 1),
            "pair_ratios": [round(r, 3) for r in pairs],
            "ratio": round(statistics.median(pairs), 3),
            "cpu_time_ratio": round(statistics.median(
                p / e for e, p in zip(engine_cpu[1:-1], self.cpu[1:-1])), 3)
            if on_cpu and len(engine_cpu) > 2 else None,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="cifar")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--plain", action="store_true", help="plain net (no shortcuts)")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=24, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="measured epoch/block pairs")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-cuda-graph", action="store_true",
                        help="engine: eager step even on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model_cfg = ModelConfig(family=args.family, depth=args.depth, width=args.width,
                            residual=not args.plain, in_channels=args.channels,
                            image_size=args.image_size, num_classes=10)
    train_images = args.steps * args.batch
    epochs = args.repeats + 1
    trial = TrialConfig(
        name="bench", model=model_cfg, seed=args.seed,
        data=DataConfig(dataset="synthetic", train_size=train_images, val_size=0,
                        test_size=args.batch),
        train=TrainConfig(recipe="cosine", epochs=epochs, batch_size=args.batch, lr=0.05,
                          precision=args.precision, device=str(device), threads=args.threads,
                          cuda_graph=not args.no_cuda_graph, eval_every=epochs))
    # The plain loops train on the same synthetic images the engine generates.
    arrays = make_synthetic(args.channels, args.image_size, 10, train_images, args.batch)
    images, labels = arrays.train_images.to(device), arrays.train_labels.to(device)
    loops = {name: Blocks(PlainLoop(model_cfg, images, labels, args, device, matched))
             for name, matched in (("bare", False), ("matched", True))}
    engine_rates: list[float] = []
    # CPU time of this process: on a shared machine it is much less noisy than wall time.
    # An engine epoch's CPU time = from the end of the previous plain blocks to its report
    # (the training loop plus the report; no evaluation or checkpoint in between here).
    engine_cpu: list[float] = []
    cpu_mark = [time.process_time()]

    def report(metrics: dict, checkpoint_path: str | None) -> None:
        engine_cpu.append(time.process_time() - cpu_mark[0])
        engine_rates.append(metrics["images_per_s"])
        for blocks in loops.values():
            blocks.run(args.steps)
        cpu_mark[0] = time.process_time()

    started = time.perf_counter()
    result = train_trial(trial, report)
    engine_total = (time.perf_counter() - started
                    - sum(sum(blocks.seconds) for blocks in loops.values()))
    assert result.status == FINISHED, result.error

    on_cpu = device.type == "cpu"
    baselines = {name: blocks.summary(engine_rates, engine_cpu, on_cpu)
                 for name, blocks in loops.items()}
    bare = baselines["bare"]
    e2e_engine = epochs * train_images / engine_total
    print(json.dumps({
        "bench": "throughput", "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "model": model_cfg.to_dict(), "batch": args.batch,
        "precision": args.precision, "steps": args.steps, "repeats": args.repeats,
        "engine_layout": "channels_last" if uses_channels_last(
            build_model(model_cfg), device) else "nchw",
        "engine_images_per_s": [round(r, 1) for r in engine_rates[1:]],
        "engine_median": round(statistics.median(engine_rates[1:]), 1),
        "ratio": bare["ratio"], "cpu_time_ratio": bare["cpu_time_ratio"],
        "ratio_note": "engine / bare eager fp32 NCHW loop (median of interleaved pairs)",
        "cpu_target": CPU_TARGET if on_cpu else None,
        "meets_cpu_target": bare["ratio"] >= CPU_TARGET if on_cpu else None,
        "baselines": baselines,
        "end_to_end": {"engine_images_per_s": round(e2e_engine, 1),
                       "ratio": round(e2e_engine / bare["median"], 3),
                       "note": "whole train_trial call (set-up, evaluation, reports, probes) "
                               "vs the bare loop's median"},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
