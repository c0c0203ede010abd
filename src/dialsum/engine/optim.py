"""Optimizer and learning-rate schedule from the training config: small translators, one per concern.

`adamw` is torch's AdamW, fused where every parameter sits on a device that supports it. `adamw_8bit` and
`paged_adamw_8bit` are bitsandbytes' 8-bit AdamW (the paged one keeps its states in memory that spills to the
host under pressure). Schedules warm up linearly over `warmup_steps`, then decay linearly or on a cosine to zero,
or stay constant: the curves of transformers' `get_scheduler`, written here because importing that one loads
transformers' trainer, peft and bitsandbytes (seconds of CPU in every process that trains an encoder-decoder).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import torch

from dialsum.config import TrainingConfig
from dialsum.errors import ConfigError


def _linear(step: int, *, warmup: int, steps: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(steps - step) / float(max(1, steps - warmup)))


def _cosine(step: int, *, warmup: int, steps: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, steps - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _constant(step: int, *, warmup: int, steps: int) -> float:
    return float(step) / float(max(1, warmup)) if step < warmup else 1.0


_SCHEDULES = {"linear": _linear, "cosine": _cosine, "constant": _constant}


def _fused_ok(groups: list[dict]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params)


def _bnb_optimizer(name: str, groups: list[dict], t: TrainingConfig) -> torch.optim.Optimizer:
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(f"training.optimizer {name} needs bitsandbytes, which is not installed") from None
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]
    try:
        return cls(groups, lr=t.learning_rate, weight_decay=t.weight_decay)
    except (RuntimeError, NotImplementedError) as exc:
        raise ConfigError(f"training.optimizer {name} is not available on this machine: {exc}") from None


def build_optimizer(t: TrainingConfig, groups: Iterable[dict]) -> torch.optim.Optimizer:
    """The configured optimizer over parameter groups (each group may set its own weight_decay)."""
    groups = [dict(g) for g in groups]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(
            groups, lr=t.learning_rate, weight_decay=t.weight_decay, fused=_fused_ok(groups) or None
        )
    return _bnb_optimizer(t.optimizer, groups, t)


def warmup_steps(t: TrainingConfig, steps: int) -> int:
    """Warmup length in optimizer steps: a fraction of all steps when below 1, else a step count."""
    return int(t.warmup_steps * steps) if t.warmup_steps < 1 else int(t.warmup_steps)


def build_scheduler(t: TrainingConfig, optimizer: torch.optim.Optimizer, steps: int):
    """The configured schedule over `steps` optimizer steps, warmup included (a `LambdaLR` over a partial, as
    transformers' schedules are, so checkpointed scheduler states load either way)."""
    curve = partial(_SCHEDULES[t.lr_scheduler], warmup=warmup_steps(t, steps), steps=steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, curve)
