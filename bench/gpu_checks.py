"""bench/gpu.py's section 1: the captured step checked against the eager one, in the
configuration trials really run (bf16 autocast, channels_last, 3 channels, cudnn.benchmark
on, the bench's batch), not a toy one.

Every check reports `captured` (the step really ran as a replayed graph, no fallback) and
the capture warnings, so a silent eager fallback cannot pass for a captured run:

- graph_vs_eager: the same seed and batches for `check_steps` steps, plain SGD and
  Nesterov + label smoothing + gradient clipping; loss and weight differences, next to the
  difference between two eager runs (cuDNN's non-deterministic algorithms: the floor), and
  the BatchNorm batch counter (= steps: every replay updates BN).
- lr: the lr tensor reaches the graph (lr 0 moves nothing).
- resume_after_capture: a graph step stopped halfway, its model and optimizer state saved
  and loaded (through torch.save, on the CPU, as a checkpoint) into a fresh model and step
  that captures again, against the uninterrupted run.
- resume_from_cpu_checkpoint: the optimizer state of an NCHW model trained on the CPU (as
  CPU trials were before they trained channels_last) loaded into a channels_last model on
  the device (a study started on CPUs and rerun on GPUs): the momentum buffers get the parameters' strides and the step captures.
- evaluate_between_replays: eager evaluation in the middle of training changes neither
  the weights (against a run without it) nor the static loss read before it.

On the CPU (--cpu-smoke) GraphStep runs its body eagerly: the same code, `captured` False.
"""

from __future__ import annotations

import io
import warnings

import torch

from bench.gpu_engine import net_config
from models import build_model
from workers.config import TrainConfig
from workers.engine import EagerStep, evaluate
from workers.graph_step import GraphCaptureWarning, GraphStep
from workers.recipes import lr_at

OPTIONS = {"sgd": {}, "nesterov_smoothing_clip": {"nesterov": True, "label_smoothing": 0.1,
                                                  "grad_clip": 0.5}}


def capture_checks(bench) -> dict:
    """Section 1 (see the module docstring); cudnn.benchmark on, as in a trial."""
    flag = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        return _checks(Checks(bench))
    finally:
        torch.backends.cudnn.benchmark = flag


def _checks(c: "Checks") -> dict:
    out: dict = {"configuration": c.describe()}
    for label, options in OPTIONS.items():
        out[label] = c.graph_vs_eager(TrainConfig(**c.train_settings, **options))
    out["lr"] = c.lr_reaches_the_graph()
    out["resume_after_capture"] = c.resume_after_capture()
    out["resume_from_cpu_checkpoint"] = c.resume_from_cpu_checkpoint()
    out["evaluate_between_replays"] = c.evaluate_between_replays()
    return out


class Checks:
    """The model, batches and settings every check shares."""

    def __init__(self, bench):
        self.device, self.steps = bench.device, bench.sizes.check_steps
        self.batch = bench.sizes.batch
        self.model_config = net_config(bench, "resnet20")     # 3 x image x image
        self.train_settings = dict(lr=0.1, batch_size=self.batch, precision="bf16")
        size = self.model_config.image_size
        gen = torch.Generator().manual_seed(1)
        self.data = [(torch.randn(self.batch, 3, size, size, generator=gen).to(self.device),
                      torch.randint(0, 10, (self.batch,), generator=gen).to(self.device))
                     for _ in range(4)]

    def describe(self) -> dict:
        return {"net": "resnet20", "width": self.model_config.width,
                "image": self.model_config.image_size, "channels": 3, "batch": self.batch,
                "precision": "bf16", "channels_last": self.device.type == "cuda",
                "cudnn_benchmark": torch.backends.cudnn.benchmark, "steps": self.steps}

    def model(self, device: torch.device | None = None, channels_last: bool | None = None):
        device = device or self.device
        torch.manual_seed(0)
        model = build_model(self.model_config).to(device)
        if channels_last is None:
            channels_last = device.type == "cuda"          # as a trial does
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def run(self, step, train: TrainConfig, start: int, stop: int, data=None) -> list[float]:
        """Steps start..stop-1 at the cosine schedule over `self.steps`; their losses."""
        data = data or self.data
        losses = []
        for i in range(start, stop):
            step.set_lr(lr_at(train, i, self.steps))
            losses.append(float(step(*data[i % len(data)])[0]))
        return losses

    def graph_vs_eager(self, train: TrainConfig) -> dict:
        runs = {}
        for kind in ("graph", "eager", "eager_again"):
            model = self.model()
            with _recorded() as caught:
                step = GraphStep(model, train, self.device) if kind == "graph" else \
                    EagerStep(model, train, self.device)
                losses = self.run(step, train, 0, self.steps)
            runs[kind] = {"model": model, "losses": losses, "step": step, "warnings": caught}
        graph, eager = runs["graph"], runs["eager"]
        bn = next(m for m in graph["model"].modules() if isinstance(m, torch.nn.BatchNorm2d))
        result = {**_captured(graph["step"], graph["warnings"]),
                  "max_weight_difference": _max_difference(graph["model"], eager["model"]),
                  "max_loss_difference": max(abs(a - b) for a, b in
                                             zip(graph["losses"], eager["losses"])),
                  "eager_vs_eager_max_weight_difference":
                      _max_difference(eager["model"], runs["eager_again"]["model"]),
                  "bn_batches_tracked": int(bn.num_batches_tracked), "steps": self.steps}
        result["bn_counter_ok"] = result["bn_batches_tracked"] == self.steps
        graph["step"].close()
        return result

    def lr_reaches_the_graph(self) -> dict:
        model = self.model()
        with _recorded() as caught:
            step = GraphStep(model, TrainConfig(**self.train_settings), self.device)
            step(*self.data[0])
            moves = []
            for lr in (0.1, 0.0, 0.01):
                step.set_lr(lr)
                before = [p.detach().clone() for p in model.parameters()]
                step(*self.data[0])
                moves.append([lr, max(float((p.detach() - b).abs().max())
                                      for p, b in zip(model.parameters(), before))])
        step.close()
        return {**_captured(step, caught), "lr_tensor_moves": moves,
                "lr_zero_leaves_weights": moves[1][1] == 0.0}

    def resume_after_capture(self) -> dict:
        train = TrainConfig(**self.train_settings, nesterov=True)
        half = self.steps // 2
        whole_model = self.model()
        with _recorded() as caught:
            whole = GraphStep(whole_model, train, self.device)
            self.run(whole, train, 0, self.steps)
            first_model = self.model()
            first = GraphStep(first_model, train, self.device)
            self.run(first, train, 0, half)
            saved = _through_a_file({"model": first_model.state_dict(),
                                     "optimizer": first.optimizer.state_dict()})
            first.close()
            torch.manual_seed(1)                            # other weights, overwritten
            model = build_model(self.model_config).to(self.device)
            if self.device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            model.load_state_dict(saved["model"])
            resumed = GraphStep(model, train, self.device)
            resumed.optimizer.load_state_dict(saved["optimizer"])
            self.run(resumed, train, half, self.steps)
        result = {"captured": whole.captured and first.captured and resumed.captured,
                  "capture_warnings": caught, "stopped_after": half, "steps": self.steps,
                  "max_weight_difference": _max_difference(model, whole_model)}
        whole.close(), resumed.close()
        return result

    def resume_from_cpu_checkpoint(self) -> dict:
        cpu = torch.device("cpu")
        train = TrainConfig(**self.train_settings)
        half = self.steps // 2
        cpu_model = self.model(cpu, channels_last=False)   # NCHW, older CPU checkpoints
        cpu_step = EagerStep(cpu_model, train, cpu)
        self.run(cpu_step, train, 0, half, data=[(x.cpu(), y.cpu()) for x, y in self.data])
        saved = _through_a_file({"model": cpu_model.state_dict(),
                                 "optimizer": cpu_step.optimizer.state_dict()})
        model = self.model(channels_last=True)
        model.load_state_dict(saved["model"])
        with _recorded() as caught:
            step = GraphStep(model, train, self.device)
            step.optimizer.load_state_dict(saved["optimizer"])
            strides_match = all(state["momentum_buffer"].stride() == p.stride()
                                for p, state in step.optimizer.state.items())
            losses = self.run(step, train, half, self.steps)
        step.close()
        return {**_captured(step, caught), "momentum_strides_match_parameters": strides_match,
                "losses_finite": all(torch.isfinite(torch.tensor(losses)).tolist())}

    def evaluate_between_replays(self) -> dict:
        train = TrainConfig(**self.train_settings)
        half = self.steps // 2
        plain_model = self.model()
        plain = GraphStep(plain_model, train, self.device)
        self.run(plain, train, 0, self.steps)
        model = self.model()
        with _recorded() as caught:
            step = GraphStep(model, train, self.device)
            self.run(step, train, 0, half)
            step.set_lr(lr_at(train, half, self.steps))
            loss = step(*self.data[half % len(self.data)])[0]   # static output, step `half`
            before = float(loss)
            evaluate(model, self.data * 2, self.device, "bf16")
            after = float(loss)                     # still the same static tensor
            self.run(step, train, half + 1, self.steps)
        result = {**_captured(step, caught), "evaluated_after_step": half + 1,
                  "static_loss_kept": before == after,
                  "max_weight_difference": _max_difference(model, plain_model)}
        plain.close(), step.close()
        return result


class _recorded:
    """Collects the GraphCaptureWarnings raised inside (as a list of messages)."""

    def __enter__(self) -> list[str]:
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always", GraphCaptureWarning)
        self.messages: list[str] = []
        return self.messages

    def __exit__(self, *exc) -> None:
        self._catcher.__exit__(*exc)
        self.messages.extend(str(w.message)[:300] for w in self._caught
                             if issubclass(w.category, GraphCaptureWarning))


def _captured(step, caught: list[str]) -> dict:
    return {"step_class": type(step).__name__, "captured": bool(step.captured),
            "capture_warnings": caught}


def _through_a_file(state: dict) -> dict:
    """`state` saved and loaded as a checkpoint is (torch.save; loaded onto the CPU)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((x.float() - y.float()).abs().max())
               for x, y in zip(a.state_dict().values(), b.state_dict().values()))
