"""Ensemble strategies and the held-out choice among them.

Strategies, each giving one summary per dialogue:

* `best_single`: every prediction of one model: the one that scores best on the selection half of dev.
* `consensus`: per dialogue, the model prediction that agrees most with the other models' predictions:

      agreement(m) = sum_{k != m} w_k * similarity(c_m, c_k) / sum_{k != m} w_k

  with `similarity` the competition score of one summary against another (`metric.similarity`, 0..100) and
  w_k = dev_k / sum_j dev_j, model k's score on the selection part of dev normalised over all models (uniform
  when every score is 0). Ties go to the higher weight, then the first name.
* `mbr:<model>`: MBR (`release.mbr`) over that model's own candidates (`generation.num_candidates` > 1).
* `mbr`: MBR over every model's candidates pooled; a model's candidates share its weight w_k equally, so each
  model counts by its score however many candidates it drew, and a candidate is supported by other models'
  candidates only (a model that draws near-duplicates cannot vote for itself). A model without candidates takes
  part with its prediction; with one candidate per model this is exactly `consensus`.

The models' weights w_k are their scores on the selection part of dev (never on held-out rows).

The choice is made on the selection part of the one dev split (`data.holdout`) and reported on the held-out part:
each strategy's score on the selection part picks it (ties: the earlier strategy in the order above), and the
held-out part gives its score with a 95% bootstrap interval, and its paired difference from best single.
The full-dev score of each strategy is reported too, marked as such. With fewer than two dev rows, or a half
left empty, there is no held-out score. An N-scaling table (MBR over the first N candidates, N = 1, 2, 4, 8, 16,
per model and pooled, on all scored dev rows with intervals) comes with runs that have candidates.

Each strategy is one function registered under its name (`strategy`): given a split's `Rows` (the predictions
and candidates of every model, the models' weights, best single's model), it picks per row a model's prediction
(the model's name) or a pooled candidate (its index in `Rows.pool()`). Where it is offered, how it is scored on
both halves of dev and how the champion applies it to new data all follow from that one function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from dialsum import metric
from dialsum.data import holdout
from dialsum.release import mbr, stats
from dialsum.release.pooling import (  # noqa: F401  (the public names of ensembling live here too)
    MBR,
    SCALING_N,
    Pool,
    Predictions,
    agreement,
    best_model,
    build_pool,
    common_fnames,
    consensus,
    consensus_pick,
    mbr_picks,
    n_scaling,
    normalised_weights,
    pool_row_scores,
)

BEST_SINGLE = "best_single"
CONSENSUS = "consensus"
SPLITS = ("dev", "test")
PER_MODEL = ":<model>"

Candidates = dict[str, dict[str, Predictions]]
"""model -> split -> fname -> summary."""
NBest = dict[str, dict[str, dict[str, list[str]]]]
"""model -> split -> fname -> candidate summaries (best or first drawn first)."""


@dataclass(frozen=True)
class EnsembleResult:
    """The chosen strategy, its predictions per split, and the scores it was chosen and reported on (dev, 0..100).

    `strategy_scores` and `model_scores` are full-dev scores; `strategies[name]` holds each strategy's
    `selection` and `held_out` scores, the held-out interval, and its held-out difference from best single.
    """

    choice: str
    best_model: str
    predictions: dict[str, Predictions]
    dev_scores: dict[str, float]
    weights: dict[str, float]
    model_scores: dict[str, float]
    strategy_scores: dict[str, float]
    consensus_picks: dict[str, int]
    rows: dict[str, int]
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)
    scaling: dict[str, Any] | None = None
    metric_weights: list[float] | None = None
    row_scores: dict[str, float] = field(default_factory=dict)
    held_out: list[str] = field(default_factory=list)

    @property
    def dev_score(self) -> float:
        """The chosen strategy's full-dev score (its selection half included)."""
        return self.strategy_scores[self.choice]

    @property
    def held_out_score(self) -> float | None:
        """The chosen strategy's score on the dev rows that did not choose it."""
        return (self.strategies.get(self.choice) or {}).get("held_out")

    def summary(self) -> dict[str, Any]:
        """Everything but the predictions, JSON-ready."""
        data = asdict(self)
        data.pop("predictions")
        return {**data, "dev_score": self.dev_score, "held_out_score": self.held_out_score}


# ---------------------------------------------------------------- the registry of strategies


Choice = str | int
"""One row's pick: a model's name (its prediction) or an index into the row's pooled candidates."""


@dataclass(frozen=True)
class Rows:
    """What a strategy sees of one split: the rows (`fnames`) every model predicted, each model's predictions and
    candidates, the models' weights (normalised selection-part dev scores, never held-out rows), best single's model
    and the metric weights of MBR's utility; `model` names the model of a per-model strategy (`mbr:<model>`)."""

    fnames: list[str]
    predictions: dict[str, Predictions]
    nbest: dict[str, dict[str, list[str]]]
    weights: dict[str, float]
    best: str
    metric_weights: Sequence[float] | None = None
    model: str | None = None
    references: dict[str, str] | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def pool(self) -> Pool:
        """The rows' pooled candidates (built once; scored against the references when there are any)."""
        if "pool" not in self.cache:
            self.cache["pool"] = build_pool(self.predictions, self.nbest, self.fnames, self.references)
        return self.cache["pool"]

    def texts(self, picks: Sequence[Choice]) -> list[str]:
        """The summaries the picks stand for, row by row."""
        return [
            self.predictions[c][f] if isinstance(c, str) else self.pool().texts[r][c]
            for r, (f, c) in enumerate(zip(self.fnames, picks))
        ]

    def scores(self, picks: Sequence[Choice], model_rows: dict[str, dict[str, float]]) -> dict[str, float]:
        """fname -> the picked summary's competition score against its reference: a model's prediction as
        `model_rows` scored it, a pooled candidate from the pool's F1 (dev rows with references only)."""
        return {
            f: model_rows[c][f] if isinstance(c, str) else float(mbr.utility(self.pool().f1[r][:, c, -1:])[0])
            for r, (f, c) in enumerate(zip(self.fnames, picks))
        }


@dataclass(frozen=True)
class Strategy:
    """A strategy: its name (`<prefix>:<model>` for one offered per model that drew candidates), its pick, and
    whether it is offered only when some model drew several candidates."""

    name: str
    pick: Callable[[Rows], list[Choice]]
    needs_candidates: bool = False

    @property
    def per_model(self) -> bool:
        return self.name.endswith(PER_MODEL)

    def offered(self, models: Sequence[str], counts: dict[str, int]) -> list[str]:
        """The names this strategy runs under for these models (in tie-breaking order)."""
        if self.per_model:
            prefix = self.name[: -len(PER_MODEL)]
            return [f"{prefix}:{m}" for m in sorted(models) if counts.get(m, 1) > 1]
        if self.needs_candidates and not any(counts.get(m, 1) > 1 for m in models):
            return []
        return [self.name]


STRATEGIES: dict[str, Strategy] = {}
"""Every strategy by name, in tie-breaking order (the simpler first)."""


def strategy(name: str, needs_candidates: bool = False) -> Callable[[Callable[[Rows], list[Choice]]], Callable]:
    """Register `pick` as the strategy `name` (decorator); `name` ending in `:<model>` offers it once per model
    that drew several candidates, with `Rows.model` naming that model."""

    def register(pick: Callable[[Rows], list[Choice]]) -> Callable[[Rows], list[Choice]]:
        STRATEGIES[name] = Strategy(name, pick, needs_candidates)
        return pick

    return register


def lookup(choice: str, models: Sequence[str]) -> tuple[Strategy, str | None]:
    """The strategy behind a name and, for a per-model one, its model; an unknown name is refused."""
    if choice in STRATEGIES and not STRATEGIES[choice].per_model:
        return STRATEGIES[choice], None
    prefix, _, model = choice.partition(":")
    found = STRATEGIES.get(prefix + PER_MODEL)
    if found is None or model not in models:
        raise ValueError(f"unknown ensemble strategy {choice!r}")
    return found, model


def apply(choice: str, rows: Rows) -> list[Choice]:
    """The picks of the strategy `choice` on `rows`."""
    found, model = lookup(choice, list(rows.predictions))
    return found.pick(replace(rows, model=model) if model else rows)


@strategy(BEST_SINGLE)
def best_single(rows: Rows) -> list[Choice]:
    """Every prediction of the model that scores best on the selection part of dev."""
    return [rows.best] * len(rows.fnames)


@strategy(CONSENSUS)
def consensus_strategy(rows: Rows) -> list[Choice]:
    """Per row, the model prediction that agrees most with the others'."""
    picks = consensus(rows.predictions, rows.fnames, rows.weights)
    return [picks[f] for f in rows.fnames]


@strategy(MBR + PER_MODEL)
def own_mbr(rows: Rows) -> list[Choice]:
    """MBR over one model's own candidates."""
    return mbr_picks(rows.pool(), dict.fromkeys(rows.weights, 1.0), rows.metric_weights, models=[rows.model])


@strategy(MBR, needs_candidates=True)
def pooled_mbr(rows: Rows) -> list[Choice]:
    """MBR over every model's candidates, each model's sharing its weight."""
    return mbr_picks(rows.pool(), rows.weights, rows.metric_weights)


# ---------------------------------------------------------------- choosing on one half, reporting on the other


def strategy_names(models: Sequence[str], counts: dict[str, int]) -> list[str]:
    """The strategies on offer, in tie-breaking order: the simpler first."""
    return [name for found in STRATEGIES.values() for name in found.offered(models, counts)]


def _counts(models: Sequence[str], nbest: NBest, split: str) -> dict[str, int]:
    """model -> the most candidates it has for one dialogue of `split` (1: only its prediction)."""
    return {m: max((len(c) for c in nbest.get(m, {}).get(split, {}).values()), default=1) for m in models}


def _split_nbest(nbest: NBest, name: str) -> dict[str, dict[str, list[str]]]:
    return {m: splits[name] for m, splits in nbest.items() if name in splits}


def _split(candidates: Candidates, name: str) -> dict[str, Predictions]:
    return {m: splits[name] for m, splits in candidates.items() if name in splits}


def combine(
    choice: str,
    candidates: Candidates,
    dev_scores: dict[str, float],
    nbest: NBest | None = None,
    best: str | None = None,
    metric_weights: Sequence[float] | None = None,
    weights: dict[str, float] | None = None,
) -> dict[str, Predictions]:
    """Apply a chosen strategy to new predictions and candidates (e.g. the champion's members on new data), per
    split, on the fnames every model predicted; `best` names best single's model (default: the best dev score),
    `weights` the model weights the ensemble used (default: the normalised dev scores)."""
    models = sorted(candidates)
    lookup(choice, models)
    scores = {m: dev_scores[m] for m in models}
    best = best or best_model(scores)
    weights = normalised_weights({m: weights[m] for m in models} if weights else scores)
    out = {}
    for name in SPLITS:
        split = _split(candidates, name)
        if len(split) != len(candidates):
            continue
        rows = Rows(common_fnames(split), split, _split_nbest(nbest or {}, name), weights, best, metric_weights)
        out[name] = dict(zip(rows.fnames, rows.texts(apply(choice, rows))))
    return out


def _mean(rows: dict[str, float], fnames: Sequence[str]) -> float | None:
    return float(np.mean([rows[f] for f in fnames])) if fnames else None


def _report(rows: dict[str, float], selection: list[str], held: list[str], base: dict[str, float]) -> dict[str, Any]:
    """One strategy's selection-half, held-out and full-dev scores, the held-out interval and its paired
    held-out difference from best single."""
    out: dict[str, Any] = {
        "selection": _mean(rows, selection),
        "held_out": _mean(rows, held),
        "full": _mean(rows, list(rows)),
    }
    if held:
        interval = stats.bootstrap_interval([rows[f] for f in held])
        diff = stats.paired_bootstrap([rows[f] for f in held], [base[f] for f in held])
        out.update(
            held_out_low=interval.low,
            held_out_high=interval.high,
            vs_best_single=diff.mean,
            vs_best_single_low=diff.low,
            vs_best_single_high=diff.high,
        )
    return out


def _selection_weights(
    dev: dict[str, Predictions], fnames: list[str], references: dict[str, str], selection: list[str]
) -> dict[str, float]:
    """The models' weights for consensus and pooled MBR: their scores on the selection rows only."""
    with holdout.choosing("pooled MBR model weights"):
        holdout.read(selection)
        refs = [references[f] for f in selection]
        return normalised_weights({m: metric.score([dev[m][f] for f in selection], refs)["score"] for m in sorted(dev)})


def build_ensemble(
    candidates: Candidates,
    dev_scores: dict[str, float],
    references: dict[str, str],
    nbest: NBest | None = None,
    seed: int | None = stats.SPLIT_SEED,
    metric_weights: Sequence[float] | None = None,
    model_weights: dict[str, float] | None = None,
) -> EnsembleResult:
    """Score every strategy on both parts of the dev rows every model predicted, choose on the selection part,
    and apply the choice to every split (see the module docstring). `seed` replaces the configured split seed;
    `metric_weights` (ROUGE-1, -2, -L) change MBR's utility; `model_weights` replace the selection-part scores as
    the models' weights in consensus and pooled MBR."""
    if not candidates:
        raise ValueError("an ensemble needs at least one model")
    nbest = nbest or {}
    dev = _split(candidates, "dev")
    if len(dev) != len(candidates):
        raise ValueError(f"no dev predictions from {', '.join(sorted(set(candidates) - set(dev)))}")
    fnames = common_fnames(dev, list(references))
    if not fnames:
        raise ValueError("the models share no dev dialogue that has a reference")
    dev_split = holdout.dev_split(seed)
    selection, held = dev_split.parts(fnames)
    if not selection or not held:
        selection, held = list(fnames), []
    scores = {m: dev_scores[m] for m in sorted(candidates)}
    weights = (
        normalised_weights({m: model_weights[m] for m in scores})
        if model_weights
        else _selection_weights(dev, fnames, references, selection)
    )
    counts = _counts(scores, nbest, "dev")
    names = strategy_names(list(scores), counts)
    refs = [references[f] for f in fnames]
    model_rows = {m: dict(zip(fnames, metric.row_scores([dev[m][f] for f in fnames], refs))) for m in sorted(dev)}
    with holdout.choosing("ensemble strategy"):
        holdout.read(selection)
        best = max(sorted(scores), key=lambda m: _mean(model_rows[m], selection))
        rows = Rows(fnames, dev, _split_nbest(nbest, "dev"), weights, best, metric_weights, references=references)
        picks = {name: apply(name, rows) for name in names}
        dev_rows = {name: rows.scores(picks[name], model_rows) for name in names}
        report = {name: _report(dev_rows[name], selection, held, dev_rows[BEST_SINGLE]) for name in names}
        choice = max(names, key=lambda n: (report[n]["selection"], -names.index(n)))
    predictions = {}
    for name in SPLITS:
        split = _split(candidates, name)
        if len(split) == len(candidates):
            order = common_fnames(split)
            on = (
                rows
                if name == "dev" and order == fnames
                else Rows(order, split, _split_nbest(nbest, name), weights, best, metric_weights)
            )
            predictions[name] = dict(zip(order, on.texts(picks[choice] if on is rows else apply(choice, on))))
    scaled = any(n > 1 for n in counts.values())
    return EnsembleResult(
        choice=choice,
        best_model=best,
        predictions=predictions,
        dev_scores=scores,
        weights=weights,
        model_scores={m: _mean(model_rows[m], fnames) for m in scores},
        strategy_scores={n: report[n]["full"] for n in names},
        consensus_picks={m: sum(p == m for p in picks[CONSENSUS]) for m in scores},
        rows={name: len(preds) for name, preds in predictions.items()} | {"dev_scored": len(fnames)},
        strategies=report,
        split={**dev_split.record(fnames), "selection": len(selection), "held_out": len(held)},
        candidates=counts,
        scaling=n_scaling(rows.pool(), weights, counts, metric_weights) if scaled else None,
        metric_weights=list(metric_weights) if metric_weights else None,
        row_scores=dict(dev_rows[choice]),
        held_out=held,
    )
