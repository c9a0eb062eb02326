"""Training throughput of the resweep engine against a plain eager PyTorch loop. Prints JSON.

Both train the same network (`models.build_model`, same seed) at the same batch size and
precision on the same on-device synthetic uint8 data, normalised and augmented (pad-4
crop + flip) on the device. They run in one process, interleaved (plain, engine, plain,
engine, ...), and the medians are compared:

- engine: `workers.train_trial` for two epochs of `--steps` steps each; its own per-epoch
  `images_per_s` of the second epoch (the first is warm-up) — the loop with its metric
  accumulation, lr schedule and divergence checks.
- plain:  the loop below: `--steps` warm-up steps, then `--steps` timed steps.
- end_to_end: the whole `train_trial` call (data set-up, evaluation, checkpoint-free
  reporting, probes) against the plain loop's total, to show what the extras cost.

    python bench/throughput.py                                 # CPU defaults (~1-2 min)
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
from workers.trial import train_trial  # noqa: E402


def plain_loop(model_cfg: ModelConfig, images: torch.Tensor, labels: torch.Tensor,
               args: argparse.Namespace, device: torch.device) -> dict:
    """Textbook eager training on on-device uint8 data; returns images/s of the timed steps."""
    torch.manual_seed(args.seed)
    model = build_model(model_cfg).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x_all = images.float()
    mean = x_all.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = x_all.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
    del x_all
    gen = torch.Generator(device=device).manual_seed(args.seed)
    n, size, batch = images.shape[0], images.shape[-1], args.batch

    def step(i: int) -> torch.Tensor:
        index = torch.randint(0, n, (batch,), generator=gen, device=device)
        x = (images[index].float() - mean) / std
        x = F.pad(x, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,), generator=gen, device=device).tolist()
        x = x[:, :, dy:dy + size, dx:dx + size]
        flip = torch.rand(batch, generator=gen, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = F.cross_entropy(model(x), labels[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    started = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    timed = time.perf_counter()
    for i in range(args.steps):
        loss = step(i)
    loss.item()  # host sync
    end = time.perf_counter()
    return {"images_per_s": args.steps * batch / (end - timed), "total_s": end - started}


def engine_run(trial: TrialConfig, args: argparse.Namespace) -> dict:
    reports = []
    started = time.perf_counter()
    result = train_trial(trial, lambda metrics, checkpoint: reports.append(metrics))
    total = time.perf_counter() - started
    assert result.status == "finished", result.error
    return {"images_per_s": reports[-1]["images_per_s"], "total_s": total}


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
    parser.add_argument("--repeats", type=int, default=3)
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
    trial = TrialConfig(
        name="bench", model=model_cfg, seed=args.seed,
        data=DataConfig(dataset="synthetic", train_size=train_images, val_size=0,
                        test_size=args.batch),
        train=TrainConfig(recipe="cosine", epochs=2, batch_size=args.batch, lr=0.05,
                          precision=args.precision, device=str(device), threads=args.threads,
                          cuda_graph=not args.no_cuda_graph))
    # The plain loop trains on the same synthetic images the engine generates.
    from workers.readers import make_synthetic
    arrays = make_synthetic(args.channels, args.image_size, 10, train_images, args.batch)
    images, labels = arrays.train_images.to(device), arrays.train_labels.to(device)

    runs: dict[str, list[dict]] = {"plain": [], "engine": []}
    for _ in range(args.repeats):
        runs["plain"].append(plain_loop(model_cfg, images, labels, args, device))
        runs["engine"].append(engine_run(trial, args))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    engine, plain = median("engine", "images_per_s"), median("plain", "images_per_s")
    # end to end: all images trained (2 x steps x batch) over the whole call's wall time
    images_trained = 2 * args.steps * args.batch
    e2e_engine = images_trained / median("engine", "total_s")
    e2e_plain = images_trained / median("plain", "total_s")
    print(json.dumps({
        "bench": "throughput", "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "model": model_cfg.to_dict(), "batch": args.batch,
        "precision": args.precision, "steps": args.steps, "repeats": args.repeats,
        "engine_images_per_s": [round(r["images_per_s"], 1) for r in runs["engine"]],
        "plain_images_per_s": [round(r["images_per_s"], 1) for r in runs["plain"]],
        "engine_median": round(engine, 1), "plain_median": round(plain, 1),
        "ratio": round(engine / plain, 3),
        "end_to_end": {"engine_images_per_s": round(e2e_engine, 1),
                       "plain_images_per_s": round(e2e_plain, 1),
                       "ratio": round(e2e_engine / e2e_plain, 3),
                       "note": "engine includes data set-up, evaluation and probes"},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
