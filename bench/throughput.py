"""Training throughput of the resweep engine against a plain eager PyTorch loop. Prints JSON.

Both train the same network (`models.build_model`, same seed) at the same batch size and
precision on the same on-device synthetic uint8 data, normalised and augmented (pad-4
crop + flip) on the device, in one process.

Interleaving: the engine (`workers.train_trial`) runs `--repeats` + 1 epochs of `--steps`
steps; at the end of every epoch its report callback runs one block of `--steps` steps of
the plain loop. So each engine epoch (its own `images_per_s`: the training loop with metric
accumulation, lr schedule and divergence checks) is paired with a plain block measured
right after it, under the same machine load; epoch 1 and the block after it are warm-up.
`ratio` is the median of the per-pair ratios; on the CPU, `cpu_time_ratio` is the same
from the process's CPU time (plain CPU s / engine CPU s per pair, the last epoch left out
because its report comes after the probes), which contention on a shared machine
disturbs far less than wall time. `end_to_end` divides all images the engine
trained by the wall time of the whole `train_trial` call (data set-up, evaluation,
reports, probes; the plain blocks subtracted) and compares it with the plain median.

    python bench/throughput.py                                 # CPU defaults (~1 min)
    python bench/throughput.py --device cuda --depth 56 --width 1 --channels 3 \
        --image-size 32 --steps 200 --precision bf16           # a GPU box with torch only

On the CPU the engine must reach >= 0.95x the plain loop (issue 4).
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
from workers.engine import pick_device  # noqa: E402
from workers.data.arrays import make_synthetic  # noqa: E402
from workers.results import FINISHED  # noqa: E402
from workers.trial import train_trial  # noqa: E402


class PlainLoop:
    """Textbook eager training on on-device uint8 data (the baseline)."""

    def __init__(self, model_cfg: ModelConfig, images: torch.Tensor, labels: torch.Tensor,
                 args: argparse.Namespace, device: torch.device):
        torch.manual_seed(args.seed)
        self.model = build_model(model_cfg).to(device)
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9,
                                   weight_decay=1e-4)
        as_float = images.float()
        self.mean = as_float.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.std = as_float.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.gen = torch.Generator(device=device).manual_seed(args.seed)
        self.images, self.labels, self.device = images, labels, device
        self.batch, self.bf16 = args.batch, args.precision == "bf16"

    def step(self) -> torch.Tensor:
        n, size, batch, device = self.images.shape[0], self.images.shape[-1], self.batch, self.device
        index = torch.randint(0, n, (batch,), generator=self.gen, device=device)
        x = (self.images[index].float() - self.mean) / self.std
        x = F.pad(x, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,), generator=self.gen, device=device).tolist()
        x = x[:, :, dy:dy + size, dx:dx + size]
        flip = torch.rand(batch, generator=self.gen, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
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
    # The plain loop trains on the same synthetic images the engine generates.
    arrays = make_synthetic(args.channels, args.image_size, 10, train_images, args.batch)
    plain = PlainLoop(model_cfg, arrays.train_images.to(device), arrays.train_labels.to(device),
                      args, device)
    engine_rates: list[float] = []
    plain_rates: list[float] = []
    plain_seconds: list[float] = []
    # CPU time of this process: on a shared machine it is much less noisy than wall time.
    # An engine epoch's CPU time = from the end of the previous plain block to its report
    # (the training loop plus the report; no evaluation or checkpoint in between here).
    engine_cpu: list[float] = []
    plain_cpu: list[float] = []
    cpu_mark = [time.process_time()]

    def report(metrics: dict, checkpoint_path: str | None) -> None:
        engine_cpu.append(time.process_time() - cpu_mark[0])
        engine_rates.append(metrics["images_per_s"])
        rate, seconds, cpu = plain.run(args.steps)
        plain_rates.append(rate)
        plain_seconds.append(seconds)
        plain_cpu.append(cpu)
        cpu_mark[0] = time.process_time()

    started = time.perf_counter()
    result = train_trial(trial, report)
    engine_total = time.perf_counter() - started - sum(plain_seconds)
    assert result.status == FINISHED, result.error

    pairs = [e / p for e, p in zip(engine_rates[1:], plain_rates[1:])]   # epoch 1: warm-up
    engine, plain_median = statistics.median(engine_rates[1:]), statistics.median(plain_rates[1:])
    e2e_engine = epochs * train_images / engine_total
    print(json.dumps({
        "bench": "throughput", "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "model": model_cfg.to_dict(), "batch": args.batch,
        "precision": args.precision, "steps": args.steps, "repeats": args.repeats,
        "engine_images_per_s": [round(r, 1) for r in engine_rates[1:]],
        "plain_images_per_s": [round(r, 1) for r in plain_rates[1:]],
        "pair_ratios": [round(r, 3) for r in pairs],
        "engine_median": round(engine, 1), "plain_median": round(plain_median, 1),
        "ratio": round(statistics.median(pairs), 3),
        "cpu_time_ratio": round(statistics.median(
            p / e for e, p in zip(engine_cpu[1:-1], plain_cpu[1:-1])), 3)
        if device.type == "cpu" and len(engine_cpu) > 2 else None,
        "end_to_end": {"engine_images_per_s": round(e2e_engine, 1),
                       "ratio": round(e2e_engine / plain_median, 3),
                       "note": "whole train_trial call (set-up, evaluation, reports, probes) "
                               "vs the plain loop's median"},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
