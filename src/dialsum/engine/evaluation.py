"""Evaluation during training: dev loss every `eval_every` steps, the competition score at each epoch end, the best
weights by a configured metric, and early stopping.

`Evaluator.after_step` is what the training loop calls after every optimizer step; it decides whether an
evaluation is due and returns True to stop early. An optional `on_evaluation` hook sees the curve after each
evaluation and may ask training to stop there (a sweep pruning the run); the stop is recorded as requested.
`Evaluator.finish` puts the best weights back and returns the curve for `metrics.json`. `BestTracker` holds
everything a checkpoint must keep to resume the same decisions.

Every choice reads the selection part of the one dev split (`data.holdout`): `eval_score_rows` and
`eval_loss_rows` are its first rows. `held_out` scores a finished run on the held-out part, `selection_score` on
the selection part (a sweep's objective). Each evaluation records `progress`, its share of the planned steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import ModuleType

import torch

from dialsum import metric
from dialsum.data import Example, holdout
from dialsum.engine import distributed
from dialsum.engine.trainer import autocast_dtype
from dialsum.models.common import length_grouped_batches

log = logging.getLogger(__name__)


@dataclass
class BestTracker:
    """The evaluation curve, the best evaluation by `metric`, and the weights it had (trainable ones, on the CPU)."""

    metric: str
    patience: int | None = None
    curve: list[dict] = field(default_factory=list)
    best_value: float | None = None
    best_step: int | None = None
    since_best: int = 0
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    deferred: dict | None = None  # an evaluation that was due when SIGTERM stopped training; run on resume

    def better(self, record: dict) -> bool:
        """Higher score or lower loss; an equal score goes to the lower dev loss."""
        value = record[self.metric]
        if self.best_value is None:
            return True
        if self.metric == "dev_loss":
            return value < self.best_value
        if value == self.best_value:
            best = next(r for r in self.curve if r["step"] == self.best_step)
            return record.get("dev_loss", float("inf")) < best.get("dev_loss", float("inf"))
        return value > self.best_value

    def update(self, record: dict, model) -> bool:
        """Add one evaluation; keep its weights if it is the best so far. True: patience ran out, stop."""
        value = record.get(self.metric)
        improved = value is not None and self.better(record)
        self.curve.append(record)
        if value is None:
            return False
        if improved:
            self.best_value, self.best_step, self.since_best = value, record["step"], 0
            self.weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
            return False
        self.since_best += 1
        return self.patience is not None and self.since_best >= self.patience

    def restore(self, model) -> bool:
        """Copy the best weights back into `model`; False when there are none."""
        if not self.weights:
            return False
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.weights:
                    param.copy_(self.weights[name].to(param.device))
        return True

    def state_dict(self) -> dict:
        return {
            "curve": list(self.curve),
            "best_value": self.best_value,
            "best_step": self.best_step,
            "since_best": self.since_best,
            "weights": dict(self.weights),
            "deferred": self.deferred,
        }

    def load_state_dict(self, state: dict) -> None:
        self.curve, self.best_value, self.best_step = list(state["curve"]), state["best_value"], state["best_step"]
        self.since_best, self.weights = int(state["since_best"]), dict(state["weights"])
        self.deferred = state.get("deferred")


class Evaluator:
    """Dev loss (family.loss / target_count) and dev score (family.generate + metric) on configured dev subsets."""

    def __init__(
        self,
        cfg,
        family: ModuleType,
        tok,
        dev: Sequence[Example],
        on_log: Callable[[dict], None] | None = None,
        on_evaluation: Callable[[list[dict]], bool] | None = None,
    ):
        t = cfg.training
        self.cfg, self.family, self.tok, self.t, self.on_log = cfg, family, tok, t, on_log
        self.on_evaluation = on_evaluation
        self.stop_requested = False
        self.split = holdout.dev_split()
        selection = self.split.selection_examples(dev)  # only selection rows choose the step and stop early
        self.loss_rows = list(selection[: t.eval_loss_rows])
        self.loss_features = family.build_features(cfg, tok, self.loss_rows, with_labels=True)
        self.score_rows, self.dev_rows = list(selection[: t.eval_score_rows]), len(dev)
        self.planned_steps: int | None = None  # set by `fit`: evaluations record their share of the planned training
        self.score_features = family.build_features(cfg, tok, self.score_rows, with_labels=False)
        self.tracker = BestTracker(t.best_metric, t.early_stopping_patience)
        self.stopped_early = False
        self._train_sum: torch.Tensor | None = None
        self._train_n = 0

    @torch.no_grad()
    def dev_loss(self, model) -> float:
        """Mean token loss over the dev-loss rows. Data-parallel ranks each take every world-th batch and sum."""
        model.eval()
        device = next(model.parameters()).device
        amp = autocast_dtype(self.t.precision, device)
        total, tokens = torch.zeros((), device=device), 0
        holdout.read([ex.fname for ex in self.loss_rows], f"{self.t.best_metric}: best step")
        lengths = [len(f["input_ids"]) for f in self.loss_features]
        for idx in distributed.shard(length_grouped_batches(lengths, self.t.batch_size, seed=None)):
            batch = self.family.collate(self.tok, [self.loss_features[i] for i in idx])
            tokens += self.family.target_count(batch)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
                total += self.family.loss(model, batch).float()
        tokens = distributed.global_count(tokens, device)
        return float(distributed.reduce_sum(total)) / max(tokens, 1)

    def dev_score(self, model) -> float:
        """The competition score of greedy/beam summaries of the dev-score rows. Data-parallel ranks each
        summarize every world-th row; rank 0 scores the gathered summaries and every rank gets its score."""
        mine = distributed.shard(self.score_features)
        predictions = self.family.generate(self.cfg, model, self.tok, mine) if mine else []
        predictions = distributed.gather_shards(predictions)
        references = [ex.summary for ex in self.score_rows]
        holdout.read([ex.fname for ex in self.score_rows], f"{self.t.best_metric}: best step")
        return distributed.on_main(lambda: metric.score(predictions, references)["score"])

    def after_step(
        self, model, step: int, epoch: float, loss: torch.Tensor | None, epoch_end: bool, stopping: bool = False
    ) -> bool:
        """Record the step's training loss; evaluate when due. True: stop training early. `stopping` (SIGTERM):
        a due evaluation is deferred to the resumed run (kept in the tracker, which the checkpoint saves)."""
        if loss is not None:
            self._train_sum = loss.detach() if self._train_sum is None else self._train_sum + loss.detach()
            self._train_n += 1
        due = self.t.eval_every is not None and step % self.t.eval_every == 0
        if not (due or epoch_end):
            return False
        record = {"step": step, "epoch": round(epoch, 4), "train_loss": self._take_train_loss()}
        if self.planned_steps:
            record["progress"] = round(min(step / self.planned_steps, 1.0), 4)
        if stopping:
            self.tracker.deferred = {"record": record, "epoch_end": epoch_end}
            log.info("%s: evaluation at step %d deferred to the resumed run (stopping)", self.cfg.name, step)
            return False
        return self._evaluate(model, record, epoch_end)

    def run_deferred(self, model) -> bool:
        """The evaluation a stopped run deferred (see `after_step`), on the restored weights; True: stop early."""
        deferred, self.tracker.deferred = self.tracker.deferred, None
        return self._evaluate(model, dict(deferred["record"]), deferred["epoch_end"]) if deferred else False

    def _evaluate(self, model, record: dict, epoch_end: bool) -> bool:
        with holdout.choosing(f"{self.t.best_metric}: best step"):
            record["dev_loss"] = self.dev_loss(model)
            if epoch_end:
                record["dev_score"] = self.dev_score(model)
        model.train()
        stop = self.tracker.update(record, model)
        requested = self._stop_requested(next(model.parameters()).device)
        self._log(record, stop, requested)
        self.stopped_early = self.stopped_early or stop
        self.stop_requested = self.stop_requested or requested
        return stop or requested

    def _stop_requested(self, device: torch.device) -> bool:
        """Ask the `on_evaluation` hook (rank 0 only) whether to stop now; every rank gets the same answer."""
        if self.on_evaluation is None:
            return False
        asked = bool(self.on_evaluation(list(self.tracker.curve))) if distributed.is_main() else False
        return bool(distributed.reduce_sum(torch.tensor(float(asked), device=device)) > 0)

    def _take_train_loss(self) -> float | None:
        if self._train_sum is None:
            return None
        mean = float(distributed.reduce_sum(self._train_sum)) / self._train_n
        self._train_sum, self._train_n = None, 0
        return mean

    def _log(self, record: dict, stop: bool, requested: bool = False) -> None:
        rows = f" on {len(self.score_rows)} selection rows of {self.dev_rows} dev rows"
        shown = ", ".join(
            f"{k} {v:.4f}" + (rows if k == "dev_score" else "") for k, v in record.items() if isinstance(v, float)
        )
        best = " (best)" if self.tracker.best_step == record["step"] else ""
        why = "; stopping early" if stop else ("; stopping as requested" if requested else "")
        log.info("%s: eval at step %d: %s%s%s", self.cfg.name, record["step"], shown, best, why)
        if self.on_log:
            self.on_log({f"eval/{k}": v for k, v in record.items() if k != "step" and v is not None})

    def finish(self, model) -> dict:
        """Restore the best weights (when configured) and return the curve and the winner for metrics.json."""
        restored = self.t.load_best_model and self.tracker.restore(model)
        if restored:
            on = (
                f" on {len(self.score_rows)} selection rows of {self.dev_rows} dev rows"
                if self.tracker.metric == "dev_score"
                else ""
            )
            log.info(
                "%s: restored the best weights (step %s, %s %.4f%s)",
                self.cfg.name,
                self.tracker.best_step,
                self.tracker.metric,
                self.tracker.best_value,
                on,
            )
        return {
            "curve": self.tracker.curve,
            "best": {"metric": self.tracker.metric, "value": self.tracker.best_value, "step": self.tracker.best_step},
            "restored_best": bool(restored),
            "stopped_early": self.stopped_early,
            "stop_requested": self.stop_requested,
        }


def held_out(cfg, dev: Sequence[Example], predictions: Sequence[str], training: dict | None) -> dict:
    """The dev score on the held-out part of the one dev split (rows no choice ever read: not the best step, not
    early stopping, not a sweep), with the split it was measured on; the full-dev score stays in `metrics["dev"]`."""
    split = holdout.dev_split()
    rest = [i for i, ex in enumerate(dev) if split.is_held_out(ex.fname)]
    value = metric.score([predictions[i] for i in rest], [dev[i].summary for i in rest])["score"] if rest else None
    training = training or {}
    chose = training.get("restored_best") or training.get("stopped_early")
    chosen_by = f"{cfg.training.best_metric} on selection rows" if chose else "nothing chosen on dev by training"
    return {
        "score": value,
        "rows": len(rest),
        "selection_rows": len(dev) - len(rest),
        "selected_by": chosen_by,
        "split": split.record([ex.fname for ex in dev]),
    }


def selection_score(dev: Sequence[Example], predictions: Sequence[str]) -> dict:
    """The dev score on the selection part (what sweeps rank trials on), with its row count."""
    split = holdout.dev_split()
    keep = [i for i, ex in enumerate(dev) if not split.is_held_out(ex.fname)]
    holdout.read([dev[i].fname for i in keep], "sweep objective")
    value = metric.score([predictions[i] for i in keep], [dev[i].summary for i in keep])["score"] if keep else None
    return {"score": value, "rows": len(keep)}
