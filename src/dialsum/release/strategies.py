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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from dialsum import metric
from dialsum.data import holdout
from dialsum.release import mbr, stats

BEST_SINGLE = "best_single"
CONSENSUS = "consensus"
MBR = "mbr"
SPLITS = ("dev", "test")
SCALING_N = (1, 2, 4, 8, 16)

Predictions = dict[str, str]
"""fname -> summary."""
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


# ---------------------------------------------------------------- model weights and consensus


def normalised_weights(dev_scores: dict[str, float]) -> dict[str, float]:
    """Dev scores scaled to sum to 1; uniform when they sum to 0."""
    total = sum(max(score, 0.0) for score in dev_scores.values())
    if total <= 0:
        return {m: 1 / len(dev_scores) for m in dev_scores}
    return {m: max(score, 0.0) / total for m, score in dev_scores.items()}


def best_model(dev_scores: dict[str, float]) -> str:
    """The model with the highest dev score; ties go to the first name."""
    return max(sorted(dev_scores), key=lambda m: dev_scores[m])


def agreement(model: str, options: dict[str, str], weights: dict[str, float]) -> float:
    """Weighted mean similarity of `model`'s candidate to every other model's candidate (0..100)."""
    others = [k for k in options if k != model]
    total = sum(weights[k] for k in others)
    share = {k: weights[k] / total if total > 0 else 1 / len(others) for k in others}
    return sum(share[k] * metric.similarity(options[model], options[k]) for k in others)


def consensus_pick(options: dict[str, str], weights: dict[str, float]) -> str:
    """The model whose candidate agrees most with the others (one option: that model)."""
    if len(options) == 1:
        return next(iter(options))
    support = {m: agreement(m, options, weights) for m in options}
    return max(sorted(options), key=lambda m: (support[m], weights[m]))


def consensus(split: dict[str, Predictions], fnames: list[str], weights: dict[str, float]) -> dict[str, str]:
    """fname -> the model whose candidate consensus selects, for each fname."""
    return {f: consensus_pick({m: preds[f] for m, preds in split.items()}, weights) for f in fnames}


def common_fnames(split: dict[str, Predictions], order: list[str] | None = None) -> list[str]:
    """The fnames every model predicted, in `order` (default: the first model's order)."""
    models = list(split.values())
    if not models:
        return []
    order = order if order is not None else list(models[0])
    return [f for f in order if all(f in preds for preds in models)]


# ---------------------------------------------------------------- candidate pools and MBR


@dataclass(frozen=True)
class Pool:
    """One split's candidates per dialogue, pooled: models in name order, each model's in its own order. With
    `references`, each row's F1 arrays hold the reference last (row scores come from the same arrays)."""

    fnames: list[str]
    owners: list[list[tuple[str, int]]]  # per fname: (model, rank) of each pooled candidate
    texts: list[list[str]]
    f1: list[np.ndarray]
    scored: bool


def build_pool(split: dict[str, Predictions], nbest: dict[str, dict[str, list[str]]], fnames: list[str],
               references: dict[str, str] | None = None) -> Pool:
    """Each model's candidates for each fname (its prediction where it has none), with all pairwise F1."""
    owners, texts = [], []
    for f in fnames:
        row = [(m, k, text) for m in sorted(split)
               for k, text in enumerate(nbest.get(m, {}).get(f) or [split[m][f]])]
        owners.append([(m, k) for m, k, _ in row])
        texts.append([text for _, _, text in row])
    groups = [t + [references[f]] for t, f in zip(texts, fnames)] if references is not None else texts
    return Pool(fnames, owners, texts, mbr.pairwise_f1(groups), references is not None)


def mbr_picks(pool: Pool, weights: dict[str, float], metric_weights: Sequence[float] | None = None,
              models: Sequence[str] | None = None, limit: int | None = None) -> list[int]:
    """Per row, the pooled index MBR picks among the candidates of `models` (default: all) of rank < `limit`; a
    model's candidates share its weight equally (pass uniform weights for one model)."""
    picks = []
    for owners, f1 in zip(pool.owners, pool.f1):
        keep = [i for i, (m, k) in enumerate(owners)
                if (models is None or m in models) and (limit is None or k < limit)]
        per_model = {m: sum(1 for i in keep if owners[i][0] == m) for m in {owners[i][0] for i in keep}}
        w = [weights[owners[i][0]] / per_model[owners[i][0]] for i in keep]
        utility = mbr.utility(f1[:, keep][:, :, keep], metric_weights)
        picks.append(keep[mbr.pick(utility, w, [owners[i][0] for i in keep])])
    return picks


def pool_row_scores(pool: Pool, picks: list[int]) -> list[float]:
    """Each picked candidate's competition score against its row's reference (the last column)."""
    return [float(mbr.utility(f1[:, i, -1:])[0]) for f1, i in zip(pool.f1, picks)]


def n_scaling(pool: Pool, weights: dict[str, float], counts: dict[str, int],
              metric_weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Dev score (all pooled rows, 95% interval) of MBR over the first N candidates, per model and pooled."""
    most = max(counts.values())
    sizes = [n for n in SCALING_N if n <= most] + ([most] if most not in SCALING_N and most > 1 else [])
    series: dict[str, list[dict[str, Any]]] = {MBR: []}
    uniform = dict.fromkeys(weights, 1.0)
    for n in sizes:
        series[MBR].append({"n": n, **_interval(pool_row_scores(pool, mbr_picks(pool, weights, metric_weights,
                                                                                limit=n)))})
        for m in sorted(counts):
            if counts[m] >= n:
                rows = pool_row_scores(pool, mbr_picks(pool, uniform, metric_weights, models=[m], limit=n))
                series.setdefault(m, []).append({"n": n, **_interval(rows)})
    return {"sizes": sizes, "rows": len(pool.fnames), "series": series}


def _interval(rows: Sequence[float]) -> dict[str, Any]:
    interval = stats.bootstrap_interval(rows)
    return {"score": interval.mean, "low": interval.low, "high": interval.high}


# ---------------------------------------------------------------- choosing on one half, reporting on the other


def strategy_names(models: Sequence[str], counts: dict[str, int]) -> list[str]:
    """The strategies on offer, in tie-breaking order: the simpler first."""
    own = [f"{MBR}:{m}" for m in sorted(models) if counts.get(m, 1) > 1]
    return [BEST_SINGLE, CONSENSUS, *own, *([MBR] if own else [])]


def _counts(models: Sequence[str], nbest: NBest, split: str) -> dict[str, int]:
    """model -> the most candidates it has for one dialogue of `split` (1: only its prediction)."""
    return {m: max((len(c) for c in nbest.get(m, {}).get(split, {}).values()), default=1) for m in models}


def _split_nbest(nbest: NBest, name: str) -> dict[str, dict[str, list[str]]]:
    return {m: splits[name] for m, splits in nbest.items() if name in splits}


def _split(candidates: Candidates, name: str) -> dict[str, Predictions]:
    return {m: splits[name] for m, splits in candidates.items() if name in splits}


def _texts(choice: str, split: dict[str, Predictions], nbest: dict[str, dict[str, list[str]]], fnames: list[str],
           best: str, weights: dict[str, float], metric_weights: Sequence[float] | None,
           pool: Pool | None = None) -> list[str]:
    """The summaries `choice` gives for `fnames` of one split (`pool`: these fnames' pool, if already built)."""
    if choice == BEST_SINGLE:
        return [split[best][f] for f in fnames]
    if choice == CONSENSUS:
        picks = consensus(split, fnames, weights)
        return [split[picks[f]][f] for f in fnames]
    pool = pool if pool is not None and pool.fnames == fnames else build_pool(split, nbest, fnames)
    if choice == MBR:
        picks = mbr_picks(pool, weights, metric_weights)
    else:
        model = choice.split(":", 1)[1]
        picks = mbr_picks(pool, dict.fromkeys(weights, 1.0), metric_weights, models=[model])
    return [texts[i] for texts, i in zip(pool.texts, picks)]


def combine(choice: str, candidates: Candidates, dev_scores: dict[str, float], nbest: NBest | None = None,
            best: str | None = None, metric_weights: Sequence[float] | None = None,
            weights: dict[str, float] | None = None) -> dict[str, Predictions]:
    """Apply a chosen strategy to new predictions and candidates (e.g. the champion's members on new data), per
    split, on the fnames every model predicted; `best` names best single's model (default: the best dev score),
    `weights` the model weights the ensemble used (default: the normalised dev scores)."""
    models = sorted(candidates)
    valid = {BEST_SINGLE, CONSENSUS, MBR, *(f"{MBR}:{m}" for m in models)}
    if choice not in valid:
        raise ValueError(f"unknown ensemble strategy {choice!r}")
    scores = {m: dev_scores[m] for m in models}
    best = best or best_model(scores)
    weights = normalised_weights({m: weights[m] for m in models} if weights else scores)
    out = {}
    for name in SPLITS:
        split = _split(candidates, name)
        if len(split) != len(candidates):
            continue
        fnames = common_fnames(split)
        texts = _texts(choice, split, _split_nbest(nbest or {}, name), fnames, best, weights, metric_weights)
        out[name] = dict(zip(fnames, texts))
    return out


def _mean(rows: dict[str, float], fnames: Sequence[str]) -> float | None:
    return float(np.mean([rows[f] for f in fnames])) if fnames else None


def _dev_rows(dev: dict[str, Predictions], nbest: dict[str, dict[str, list[str]]], fnames: list[str],
              references: dict[str, str], weights: dict[str, float], names: list[str],
              metric_weights: Sequence[float] | None) -> tuple[dict[str, dict[str, float]], Pool | None, dict]:
    """Per-row dev scores of every model's predictions and of every strategy but best single."""
    refs = [references[f] for f in fnames]
    model_rows = {m: dict(zip(fnames, metric.row_scores([dev[m][f] for f in fnames], refs))) for m in sorted(dev)}
    picks = consensus(dev, fnames, weights)
    rows = {CONSENSUS: {f: model_rows[picks[f]][f] for f in fnames}}
    pool = build_pool(dev, nbest, fnames, references) if MBR in names else None
    for name in names:
        if name.startswith(MBR):
            models = None if name == MBR else [name.split(":", 1)[1]]
            chosen = mbr_picks(pool, weights if models is None else dict.fromkeys(weights, 1.0), metric_weights,
                               models=models)
            rows[name] = dict(zip(fnames, pool_row_scores(pool, chosen)))
    return {"models": model_rows, **rows}, pool, picks


def _report(rows: dict[str, float], selection: list[str], held: list[str], base: dict[str, float]) -> dict[str, Any]:
    """One strategy's selection-half, held-out and full-dev scores, the held-out interval and its paired
    held-out difference from best single."""
    out: dict[str, Any] = {"selection": _mean(rows, selection), "held_out": _mean(rows, held),
                           "full": _mean(rows, list(rows))}
    if held:
        interval = stats.bootstrap_interval([rows[f] for f in held])
        diff = stats.paired_bootstrap([rows[f] for f in held], [base[f] for f in held])
        out.update(held_out_low=interval.low, held_out_high=interval.high, vs_best_single=diff.mean,
                   vs_best_single_low=diff.low, vs_best_single_high=diff.high)
    return out


def _selection_weights(dev: dict[str, Predictions], fnames: list[str], references: dict[str, str],
                       selection: list[str]) -> dict[str, float]:
    """The models' weights for consensus and pooled MBR: their scores on the selection rows only."""
    with holdout.choosing("pooled MBR model weights"):
        holdout.read(selection)
        refs = [references[f] for f in selection]
        return normalised_weights({m: metric.score([dev[m][f] for f in selection], refs)["score"]
                                   for m in sorted(dev)})


def build_ensemble(candidates: Candidates, dev_scores: dict[str, float], references: dict[str, str],
                   nbest: NBest | None = None, seed: int | None = stats.SPLIT_SEED,
                   metric_weights: Sequence[float] | None = None,
                   model_weights: dict[str, float] | None = None) -> EnsembleResult:
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
    weights = (normalised_weights({m: model_weights[m] for m in scores}) if model_weights
               else _selection_weights(dev, fnames, references, selection))
    counts = _counts(scores, nbest, "dev")
    names = strategy_names(list(scores), counts)
    rows, pool, picks = _dev_rows(dev, _split_nbest(nbest, "dev"), fnames, references, weights, names, metric_weights)
    model_rows = rows.pop("models")
    with holdout.choosing("ensemble strategy"):
        holdout.read(selection)
        best = max(sorted(scores), key=lambda m: _mean(model_rows[m], selection))
        rows = {BEST_SINGLE: model_rows[best], **rows}
        report = {name: _report(rows[name], selection, held, rows[BEST_SINGLE]) for name in names}
        choice = max(names, key=lambda n: (report[n]["selection"], -names.index(n)))
    predictions = {}
    for name in SPLITS:
        split = _split(candidates, name)
        if len(split) == len(candidates):
            order = common_fnames(split)
            predictions[name] = dict(zip(order, _texts(choice, split, _split_nbest(nbest, name), order, best, weights,
                                                       metric_weights, pool)))
    return EnsembleResult(
        choice=choice, best_model=best, predictions=predictions, dev_scores=scores, weights=weights,
        model_scores={m: _mean(model_rows[m], fnames) for m in scores},
        strategy_scores={n: report[n]["full"] for n in names},
        consensus_picks={m: sum(p == m for p in picks.values()) for m in scores},
        rows={name: len(preds) for name, preds in predictions.items()} | {"dev_scored": len(fnames)},
        strategies=report, split={**dev_split.record(fnames), "selection": len(selection), "held_out": len(held)},
        candidates=counts, scaling=n_scaling(pool, weights, counts, metric_weights) if pool else None,
        metric_weights=list(metric_weights) if metric_weights else None,
        row_scores=dict(rows[choice]), held_out=held,
    )
