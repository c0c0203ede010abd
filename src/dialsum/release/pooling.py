"""The models' weights, consensus and the candidate pool that MBR picks from, shared by the ensemble strategies
(`strategies`): weights are dev scores normalised over the models; consensus picks, per dialogue, the model
prediction that agrees most with the others; a pool holds one split's candidates per dialogue with all their
pairwise F1 (and, when scored, each against its reference); the N-scaling table is MBR over the first N candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dialsum import metric
from dialsum.release import mbr, stats

MBR = "mbr"
SCALING_N = (1, 2, 4, 8, 16)

Predictions = dict[str, str]
"""fname -> summary."""


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


def build_pool(
    split: dict[str, Predictions],
    nbest: dict[str, dict[str, list[str]]],
    fnames: list[str],
    references: dict[str, str] | None = None,
) -> Pool:
    """Each model's candidates for each fname (its prediction where it has none), with all pairwise F1."""
    owners, texts = [], []
    for f in fnames:
        row = [(m, k, text) for m in sorted(split) for k, text in enumerate(nbest.get(m, {}).get(f) or [split[m][f]])]
        owners.append([(m, k) for m, k, _ in row])
        texts.append([text for _, _, text in row])
    groups = [t + [references[f]] for t, f in zip(texts, fnames)] if references is not None else texts
    return Pool(fnames, owners, texts, mbr.pairwise_f1(groups), references is not None)


def mbr_picks(
    pool: Pool,
    weights: dict[str, float],
    metric_weights: Sequence[float] | None = None,
    models: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[int]:
    """Per row, the pooled index MBR picks among the candidates of `models` (default: all) of rank < `limit`; a
    model's candidates share its weight equally (pass uniform weights for one model)."""
    picks = []
    for owners, f1 in zip(pool.owners, pool.f1):
        keep = [
            i for i, (m, k) in enumerate(owners) if (models is None or m in models) and (limit is None or k < limit)
        ]
        per_model = {m: sum(1 for i in keep if owners[i][0] == m) for m in {owners[i][0] for i in keep}}
        w = [weights[owners[i][0]] / per_model[owners[i][0]] for i in keep]
        utility = mbr.utility(f1[:, keep][:, :, keep], metric_weights)
        picks.append(keep[mbr.pick(utility, w, [owners[i][0] for i in keep])])
    return picks


def pool_row_scores(pool: Pool, picks: list[int]) -> list[float]:
    """Each picked candidate's competition score against its row's reference (the last column)."""
    return [float(mbr.utility(f1[:, i, -1:])[0]) for f1, i in zip(pool.f1, picks)]


def n_scaling(
    pool: Pool, weights: dict[str, float], counts: dict[str, int], metric_weights: Sequence[float] | None = None
) -> dict[str, Any]:
    """Dev score (all pooled rows, 95% interval) of MBR over the first N candidates, per model and pooled."""
    most = max(counts.values())
    sizes = [n for n in SCALING_N if n <= most] + ([most] if most not in SCALING_N and most > 1 else [])
    series: dict[str, list[dict[str, Any]]] = {MBR: []}
    uniform = dict.fromkeys(weights, 1.0)
    for n in sizes:
        series[MBR].append(
            {"n": n, **_interval(pool_row_scores(pool, mbr_picks(pool, weights, metric_weights, limit=n)))}
        )
        for m in sorted(counts):
            if counts[m] >= n:
                rows = pool_row_scores(pool, mbr_picks(pool, uniform, metric_weights, models=[m], limit=n))
                series.setdefault(m, []).append({"n": n, **_interval(rows)})
    return {"sizes": sizes, "rows": len(pool.fnames), "series": series}


def _interval(rows: Sequence[float]) -> dict[str, Any]:
    interval = stats.bootstrap_interval(rows)
    return {"score": interval.mean, "low": interval.low, "high": interval.high}
