"""The training loop: configured optimizer and schedule, gradient accumulation, clipping, autocast, a non-finite
guard, evaluation hooks and data parallelism.

Batches are padded dynamically and, by default, grouped by length. The loss is normalised per label token over
each whole accumulation window, so gradients do not depend on how rows fall into micro-batches. Mixed precision
never meets a GradScaler with half-precision weights: trainable weights are fp32, bf16 runs without a scaler, and
fp16 gets one. A step with a non-finite loss or gradient is skipped (see `guards.py`); evaluation, the best
weights and early stopping live in an evaluator object passed in (see `evaluation.py`). Loss values stay on the
device and are read every `log_every` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import ModuleType

import torch
from tqdm.auto import tqdm

from dialsum.config import TrainingConfig
from dialsum.engine import distributed
from dialsum.engine.checkpoint import Checkpointer
from dialsum.engine.guards import StepGuard
from dialsum.engine.optim import build_optimizer, build_scheduler
from dialsum.models.common import (
    length_grouped_batches,
    random_batches,
    token_budget_batches,
)
from dialsum.models.memory import checkpointing_needed


@dataclass
class FitResult:
    """What `fit` did: filled in as training runs, returned when it ends."""

    steps: int  # optimizer steps taken, counting those resumed from a checkpoint
    seconds: float  # wall-clock time of this call
    real_tokens: int  # non-padding tokens trained on
    padded_tokens: int  # tokens trained on, padding included
    losses: list[float] = field(default_factory=list)  # the training loss of each step, in order
    skipped_steps: int = 0  # steps the guard skipped (non-finite loss or gradient)
    stopped_early: bool = False  # the evaluator stopped training before the planned steps
    evaluation: dict = field(default_factory=dict)  # the evaluator's curve and winner, for metrics.json

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
    """An epoch's (global) micro-batches: a token budget (`max_tokens_per_batch`, always length-grouped) or
    `batch_size` rows. The budget is per rank: each data-parallel rank's share of a batch stays within it."""
    if t.max_tokens_per_batch:
        lengths = [len(f["input_ids"]) for f in features]
        return token_budget_batches(
            lengths,
            t.max_tokens_per_batch,
            seed=t.seed + epoch,
            mega=t.length_group_batches,
            multiple_of=multiple_of,
            ranks=distributed.world_size(),
        )
    if t.group_by_length:
        lengths = [len(f["input_ids"]) for f in features]
        return length_grouped_batches(lengths, t.batch_size, seed=t.seed + epoch, mega=t.length_group_batches)
    return random_batches(len(features), t.batch_size, seed=t.seed + epoch)


def windows(batches: list[list[int]], grad_accum: int) -> list[list[list[int]]]:
    """An epoch's optimizer steps: consecutive groups of `grad_accum` micro-batches (the last may hold fewer)."""
    return [batches[i : i + grad_accum] for i in range(0, len(batches), grad_accum)]


def total_steps(
    n_features: int,
    t: TrainingConfig,
    max_steps: int | None,
    features: Sequence[dict] | None = None,
    multiple_of: int = 1,
) -> int:
    """Optimizer steps of the whole run. Token-budget epochs differ in batch count, so with a budget (and
    `features`) each epoch's batches are counted exactly; the last, fractional epoch is rounded up."""
    if max_steps:
        return max_steps
    if not (t.max_tokens_per_batch and features):
        per_epoch = math.ceil(math.ceil(n_features / t.batch_size) / t.grad_accum)
        return max(1, math.ceil(per_epoch * t.epochs))
    whole, part = int(t.epochs), t.epochs - int(t.epochs)
    per_epoch = [
        math.ceil(len(_batches(features, t, e, multiple_of)) / t.grad_accum) for e in range(math.ceil(t.epochs))
    ]
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
    return [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0})
        if g["params"]
    ]


def backward_window(
    family: ModuleType, model, micro: Sequence[dict], amp: torch.dtype | None, scaler=None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Forward and backward every micro-batch of one optimizer step; returns the window's mean token loss.

    Each micro-batch's summed loss is divided by the label tokens of the whole window (counted on the host
    before anything moves to the device, and summed over ranks when data-parallel), so every token weighs the
    same, as in one big batch. Data-parallel ranks scale by the world size, which the gradient average divides
    out again. The returned loss (this rank's share of the window mean) stays on the device: reading it is left
    to logging.
    """
    device = next(model.parameters()).device
    n_tokens = max(distributed.global_count(sum(family.target_count(b) for b in micro), device), 1)
    world = distributed.world_size()
    total = torch.zeros((), device=device)
    for i, batch in enumerate(micro):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with nullcontext() if i == len(micro) - 1 else distributed.no_sync(model):
            with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
                wrapped = distributed.is_wrapped(model)
                loss = (
                    model(batch) if wrapped else family.loss(model, batch, label_smoothing=label_smoothing)
                ) / n_tokens
            (scaler.scale(loss * world) if scaler else loss * world).backward()
        total += loss.detach()
    return total


def resume(
    checkpoints: Checkpointer | None, result: FitResult, model, optimizer, scheduler, scaler, extras: dict
) -> tuple[int, int]:
    """Restore the newest checkpoint (if any) into the training objects and `result`; returns (epoch, window)."""
    position = checkpoints.restore(model, optimizer, scheduler, scaler, extras) if checkpoints else None
    if position is None:
        return 0, 0
    result.steps, result.losses = position.step, position.losses
    return position.epoch, position.window


def global_batch(t: TrainingConfig) -> TrainingConfig:
    """The config with the global micro-batch (per-rank rows × ranks) that the batch plan uses; a token budget
    stays per rank (`_batches` cuts global batches so that no rank's share exceeds it)."""
    world = distributed.world_size()
    if world == 1:
        return t
    return t.model_copy(update={"batch_size": t.batch_size * world})


def shard_rows(features: Sequence[dict], idx: Sequence[int]) -> list[dict]:
    """This rank's rows of a global micro-batch. A rank left without rows gets one with every label masked, so
    each rank runs the same forward/backward passes and contributes nothing."""
    mine = distributed.shard(idx)
    if mine:
        return [features[j] for j in mine]
    row = dict(features[idx[0]])
    row["labels"] = [-100] * len(row["labels"])
    return [row]


def _log_losses(result: FitResult, pending: list, bar, on_log, extra: dict) -> None:
    """Read the losses and gradient norms kept on the device since the last read (one sync), then log them."""
    stacked = torch.stack(pending)
    stacked[:, 0] = distributed.reduce_sum(stacked[:, 0])
    values, norms = stacked.T.tolist()
    pending.clear()
    result.losses += values
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    loss = sum(finite) / len(finite)
    bar.set_postfix(loss=f"{loss:.3f}")
    if on_log:
        on_log({"train/loss": loss, "train/grad_norm": norms[-1], "train/step": result.steps, **extra})


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
    checkpoints: Checkpointer | None = None,
    evaluation=None,
    label: str = "train",
) -> FitResult:
    """Train `model` on `features` in place; returns step count, timing and token counts.

    With `checkpoints`, training first resumes from the newest checkpoint (if any) and checkpoints as it goes.
    `evaluation` (an `evaluation.Evaluator`) is called after every step and may stop training early; at the
    end it restores the best weights. After SIGTERM or Ctrl-C nothing is evaluated: the step's checkpoint comes
    first, and the evaluation it would have run is run when training resumes. Data-parallel ranks share one batch
    plan of global micro-batches. `label` names the progress bar.
    """
    device = next(model.parameters()).device
    torch.manual_seed(t.seed)
    amp = autocast_dtype(t.precision, device)
    if use_checkpointing(t, model, features, device, amp):
        _enable_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(t, param_groups(model, t.weight_decay))
    t = global_batch(t)
    multiple = 8 if device.type == "cuda" else 1
    steps = total_steps(len(features), t, max_steps, features, multiple)
    scheduler = build_scheduler(t, optimizer, steps)
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None
    guard, trained, pending = StepGuard(t.max_bad_steps), distributed.wrap(model, family, t.label_smoothing), []
    result = FitResult(0, 0.0, 0, 0)
    extras = {"guard": guard} | ({"evaluation": evaluation.tracker} if evaluation is not None else {})
    if evaluation is not None:
        evaluation.planned_steps = steps  # evaluations record their share of the planned training (sweeps compare it)
    first_epoch, skip = resume(checkpoints, result, model, optimizer, scheduler, scaler, extras)
    if evaluation is not None and evaluation.run_deferred(model):  # due when the run it resumes was stopped
        result.stopped_early = True
    bar = tqdm(
        total=steps, initial=result.steps, desc=label, unit="step", disable=None if show_progress else True, leave=False
    )
    model.train()
    start, epoch = time.perf_counter(), first_epoch
    while result.steps < steps and not result.stopped_early:
        epoch_windows = windows(_batches(features, t, epoch, multiple), t.grad_accum)
        for w, window in enumerate(epoch_windows):
            if epoch == first_epoch and w < skip:
                continue  # done before the checkpoint this run resumed from
            micro = [family.collate(tok, shard_rows(features, idx), multiple_of=multiple) for idx in window]
            result.real_tokens += sum(int(b["attention_mask"].sum()) for b in micro)
            result.padded_tokens += sum(b["attention_mask"].numel() for b in micro)
            loss = backward_window(family, trained, micro, amp, scaler, t.label_smoothing)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            ok = guard.check(result.steps + 1, loss, None if scaler else grad_norm)
            if scaler:
                if ok:
                    scaler.step(optimizer)
                scaler.update()
            elif ok:
                optimizer.step()
            if ok:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            pending.append(torch.stack([loss, grad_norm.to(loss.device).float()]))
            bar.update(1)
            position = epoch + (w + 1) / len(epoch_windows)
            if result.steps % t.log_every == 0 or result.steps >= steps:
                _log_losses(
                    result, pending, bar, on_log, {"train/lr": scheduler.get_last_lr()[0], "train/epoch": position}
                )
            end = w == len(epoch_windows) - 1 or result.steps >= steps
            stopping = (
                checkpoints is not None and checkpoints.stopping()
            )  # SIGTERM or Ctrl-C: checkpoint now, evaluate later
            if evaluation is not None and evaluation.after_step(
                model, result.steps, position, loss if ok else None, end, stopping=stopping
            ):
                result.stopped_early = True
            if checkpoints and checkpoints.due(result.steps, w, len(epoch_windows), steps):
                if pending:
                    _log_losses(result, pending, bar, None, {})
                checkpoints.after_step(
                    result.steps,
                    result.losses,
                    epoch,
                    w,
                    len(epoch_windows),
                    steps,
                    model,
                    optimizer,
                    scheduler,
                    scaler,
                    extras,
                )
            if result.stopped_early:
                break
            if result.steps >= steps:
                break
        epoch += 1
    if pending:
        _log_losses(result, pending, bar, None, {})
    result.skipped_steps = guard.skipped
    if evaluation is not None:
        result.evaluation = evaluation.finish(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result.seconds = time.perf_counter() - start
    bar.close()
    model.eval()
    return result
