"""The training loop: AdamW, linear warmup/decay, gradient accumulation, clipping and autocast.

Batches are padded dynamically and, by default, grouped by length. The loss is normalised per label token over
each whole accumulation window, so gradients do not depend on how rows fall into micro-batches. Mixed precision
never meets a GradScaler with half-precision weights: trainable weights are fp32, bf16 runs without a scaler, and
fp16 gets one.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from dialsum.config import TrainingConfig
from dialsum.models.common import length_grouped_batches, random_batches, token_budget_batches
from dialsum.models.memory import checkpointing_needed


@dataclass
class FitResult:
    steps: int
    seconds: float
    real_tokens: int
    padded_tokens: int
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / max(self.seconds, 1e-9)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32."""
    if device.type != "cuda":
        return torch.bfloat16 if precision == "bf16" else None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def _batches(features: Sequence[dict], t: TrainingConfig, epoch: int, multiple_of: int = 1) -> list[list[int]]:
    """An epoch's micro-batches: a token budget (`max_tokens_per_batch`, always length-grouped) or `batch_size` rows."""
    if t.max_tokens_per_batch:
        lengths = [len(f["input_ids"]) for f in features]
        return token_budget_batches(lengths, t.max_tokens_per_batch, seed=t.seed + epoch, mega=t.length_group_batches,
                                    multiple_of=multiple_of)
    if t.group_by_length:
        lengths = [len(f["input_ids"]) for f in features]
        return length_grouped_batches(lengths, t.batch_size, seed=t.seed + epoch, mega=t.length_group_batches)
    return random_batches(len(features), t.batch_size, seed=t.seed + epoch)


def windows(batches: list[list[int]], grad_accum: int) -> list[list[list[int]]]:
    """An epoch's optimizer steps: consecutive groups of `grad_accum` micro-batches (the last may hold fewer)."""
    return [batches[i : i + grad_accum] for i in range(0, len(batches), grad_accum)]


def total_steps(n_features: int, t: TrainingConfig, max_steps: int | None,
                features: Sequence[dict] | None = None, multiple_of: int = 1) -> int:
    """Optimizer steps of the whole run. Token-budget epochs differ in batch count, so with a budget (and
    `features`) each epoch's batches are counted exactly; the last, fractional epoch is rounded up."""
    if max_steps:
        return max_steps
    if not (t.max_tokens_per_batch and features):
        per_epoch = math.ceil(math.ceil(n_features / t.batch_size) / t.grad_accum)
        return max(1, math.ceil(per_epoch * t.epochs))
    whole, part = int(t.epochs), t.epochs - int(t.epochs)
    per_epoch = [math.ceil(len(_batches(features, t, e, multiple_of)) / t.grad_accum) for e in range(math.ceil(t.epochs))]
    return max(1, sum(per_epoch[:whole]) + (math.ceil(part * per_epoch[whole]) if part else 0))


def use_checkpointing(t: TrainingConfig, model, features: Sequence[dict], device: torch.device, amp) -> bool:
    """`gradient_checkpointing`, with `auto` resolved by the activation-memory estimate of the largest micro-batch."""
    if t.gradient_checkpointing != "auto":
        return bool(t.gradient_checkpointing)
    tokens = t.max_tokens_per_batch or t.batch_size * max(len(f["input_ids"]) for f in features)
    return checkpointing_needed(model, tokens, device, act_bytes=2 if amp else 4)


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight matrices decay; biases, norm weights and other 1-D parameters do not."""
    decay, keep = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and "norm" not in name.lower() else keep).append(param)
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}) if g["params"]]


def backward_window(family: ModuleType, model, micro: Sequence[dict], amp: torch.dtype | None, scaler=None) -> torch.Tensor:
    """Forward and backward every micro-batch of one optimizer step; returns the window's mean token loss.

    Each micro-batch's summed loss is divided by the label tokens of the whole window (counted on the host
    before anything moves to the device), so every token weighs the same, as in one big batch. The returned
    loss stays on the device: reading it is left to logging.
    """
    device = next(model.parameters()).device
    n_tokens = max(sum(family.target_count(b) for b in micro), 1)
    total = torch.zeros((), device=device)
    for batch in micro:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            loss = family.loss(model, batch) / n_tokens
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach()
    return total


def _read_losses(result: FitResult, pending: list[torch.Tensor]) -> None:
    """Move the window losses still on the device into `result.losses`: one host sync per logging interval."""
    if pending:
        result.losses.extend(torch.stack(pending).float().cpu().tolist())
        pending.clear()


def _enable_checkpointing(model) -> None:
    enabled = getattr(model, "is_activation_checkpointing", None)
    if enabled is None:
        enabled = getattr(model, "is_gradient_checkpointing", False)
    if not enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()


def fit(
    t: TrainingConfig,
    family: ModuleType,
    model,
    tok,
    features: Sequence[dict],
    max_steps: int | None = None,
    on_log: Callable[[dict], None] | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train `model` on `features` in place; returns step count, timing and token counts."""
    device = next(model.parameters()).device
    torch.manual_seed(t.seed)
    amp = autocast_dtype(t.precision, device)
    if use_checkpointing(t, model, features, device, amp):
        _enable_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.learning_rate, fused=True)
    multiple = 8 if device.type == "cuda" else 1
    steps = total_steps(len(features), t, max_steps, features, multiple)
    warmup = int(t.warmup_steps * steps) if t.warmup_steps < 1 else int(t.warmup_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None
    result = FitResult(0, 0.0, 0, 0)
    bar = tqdm(total=steps, desc="train", unit="step", disable=None if show_progress else True, leave=False)
    model.train()
    start, epoch, pending = time.perf_counter(), 0, []
    while result.steps < steps:
        epoch_windows = windows(_batches(features, t, epoch, multiple), t.grad_accum)
        for w, window in enumerate(epoch_windows):
            micro = [family.collate(tok, [features[j] for j in idx], multiple_of=multiple) for idx in window]
            result.real_tokens += sum(int(b["attention_mask"].sum()) for b in micro)
            result.padded_tokens += sum(b["attention_mask"].numel() for b in micro)
            loss = backward_window(family, model, micro, amp, scaler)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            pending.append(loss)
            bar.update(1)
            if result.steps % t.logging_steps == 0 or result.steps >= steps:
                _read_losses(result, pending)
                bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
                if on_log:
                    on_log({"train/loss": result.losses[-1], "train/lr": scheduler.get_last_lr()[0],
                            "train/grad_norm": float(grad_norm), "train/epoch": epoch + (w + 1) / len(epoch_windows)})
            if result.steps >= steps:
                break
        epoch += 1
    _read_losses(result, pending)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result.seconds = time.perf_counter() - start
    bar.close()
    model.eval()
    return result
