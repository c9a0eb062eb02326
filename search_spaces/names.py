"""How trials are named: readable, filesystem- and MLflow-safe names built from the model
(`plain-56-A-w1`), the varied values that are not part of the model name, and the seed.
Names are for people; `trial_id` is what identifies a trial."""

from __future__ import annotations

import re
from typing import Any, Iterable

from models.config import ModelConfig
from search_spaces.validate import ParamKey
from workers.config import TrialConfig

_MODEL_NAME_FIELDS = ("family", "depth", "block", "residual", "shortcut", "width", "stages")


def model_name(m: ModelConfig) -> str:
    """plain-56-A-w1, resnet-29-bottleneck-B-w0.5, resnet-imagenet-50-B-w1, plain-mlp-10."""
    kind = "resnet" if m.residual else "plain"
    if m.family == "mlp":
        return f"{kind}-mlp-{m.depth}"
    parts = [kind]
    if m.family == "imagenet":
        parts.append("imagenet")
        parts.append("x".join(map(str, m.stages)) if m.stages else str(m.depth))
        if m.stages and m.block == "bottleneck":
            parts.append("bottleneck")
    else:
        parts.append(str(m.depth))
        if m.block == "bottleneck":
            parts.append("bottleneck")
    parts += [m.shortcut, f"w{m.width:g}"]
    return "-".join(parts)


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(format_value(v) for v in value)
    return str(value)


def trial_name(trial: TrialConfig, varied: Iterable[ParamKey], cell_values: dict,
               seed: int | None = None) -> str:
    """Readable, filesystem- and MLflow-safe: model name, varied extras, seed (`seed`,
    else the trial's)."""
    parts = [model_name(trial.model)]
    for key in varied:
        if key.section == "model" and key.field in _MODEL_NAME_FIELDS:
            continue
        parts.append(f"{key.short}{format_value(cell_values.get(key.dotted))}")
    parts.append(f"s{trial.seed if seed is None else seed}")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))


def unique_names(trials: list[TrialConfig]) -> list[TrialConfig]:
    """Append the trial_id's first digits to names that would otherwise repeat."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.name] = counts.get(t.name, 0) + 1
    return [t if counts[t.name] == 1 else t.replace(name=f"{t.name}-{t.trial_id[:6]}")
            for t in trials]
