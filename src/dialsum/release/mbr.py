"""Minimum Bayes risk selection with the competition metric as the utility.

For one dialogue with candidates c_1..c_n (weights v_j), MBR picks the candidate whose expected utility against
the others is highest:

    EU(i) = sum_{j != i} v_j * u(c_i, c_j) / sum_{j != i} v_j

`u` is the competition score of c_i against c_j (`metric.similarity`: ROUGE-1/2/L F1 on Kiwi morphemes, 0..100),
optionally with other weights per metric. A candidate is never its own pseudo-reference, and the weights of the
others are renormalised per candidate, so with one candidate per model and v = the models' dev-score weights,
MBR is exactly `ensemble.consensus`. Ties go to the higher weight, then the earlier candidate. Over candidates
pooled from several models, only other models' candidates support a candidate (`groups`): a model that draws
many near-duplicates would otherwise vote for itself.

The utility is computed for all pairs at once, without calling rouge-score per pair:
* every distinct text is analysed once, through the same morpheme analysis as `metric.py`;
* ROUGE-1/2 overlaps are sums of min(count_i, count_j) over n-gram count arrays, computed as matrix products of
  "count >= k" indicator arrays;
* ROUGE-L's longest common subsequence runs bit-parallel (one machine word per 64 morphemes) over all pairs of
  many dialogues at once, in numpy;
* F1 is formed with the same operations as rouge-score, so the result equals `metric.similarity` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dialsum import metric

METRICS = metric.ROUGE_TYPES
PAIRS_PER_CHUNK = 65536
_WORD = 64


@dataclass(frozen=True)
class _Group:
    """One dialogue's distinct candidates: local token ids per candidate, and where each candidate maps."""

    tokens: list[np.ndarray]
    vocab: int
    expand: np.ndarray  # candidate position -> index of its distinct text


def _encode(groups: Sequence[Sequence[str]]) -> list[_Group]:
    distinct = [list(dict.fromkeys(g)) for g in groups]
    analysed = metric.morphemes_many([t for texts in distinct for t in texts])
    ids: dict[str, int] = {}
    out, at = [], 0
    for texts, group in zip(distinct, groups):
        global_ids = [
            np.array([ids.setdefault(m, len(ids)) for m in analysed[at + k]], dtype=np.int64) for k in range(len(texts))
        ]
        at += len(texts)
        flat = np.concatenate(global_ids) if global_ids else np.zeros(0, np.int64)
        vocab, local = np.unique(flat, return_inverse=True)
        cuts = np.cumsum([len(g) for g in global_ids])[:-1]
        where = {t: k for k, t in enumerate(texts)}
        out.append(
            _Group(
                np.split(local.astype(np.int64), cuts), len(vocab), np.array([where[t] for t in group], dtype=np.int64)
            )
        )
    return out


def _overlap(codes: list[np.ndarray]) -> np.ndarray:
    """sum_v min(count_i[v], count_j[v]) for every pair of code sequences: matrix products of count >= k."""
    n = len(codes)
    lengths = np.array([len(c) for c in codes])
    if lengths.sum() == 0:
        return np.zeros((n, n))
    _, inverse = np.unique(np.concatenate(codes), return_inverse=True)
    width = int(inverse.max()) + 1
    counts = np.bincount(np.repeat(np.arange(n), lengths) * width + inverse, minlength=n * width).reshape(n, width)
    out = np.zeros((n, n), dtype=np.float32)
    for k in range(1, int(counts.max()) + 1):
        present = (counts >= k).astype(np.float32)
        out += present @ present.T  # exact: integer counts far below 2**24
    return out.astype(np.float64)


def _f1(overlap: np.ndarray, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """rouge-score's F1 from overlap counts, operation for operation: p = x / max(n_pred, 1), r likewise,
    F = 2 * p * r / (p + r), 0 when p + r is 0."""
    p = overlap / np.maximum(pred, 1)
    r = overlap / np.maximum(target, 1)
    total = p + r
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * p * r / total, 0.0)


def _lcs_chunk(groups: list[_Group], pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """LCS lengths of the given (i, j) pairs of each group, bit-parallel over all pairs of the chunk.

    For pair (a, b), `a`'s positions are bits; per morpheme y of `b`: U = V & M_a[y], V = (V + U) | (V - U), where
    V - U = V & ~U since U is a subset of V. The LCS is the number of zero bits of V.
    """
    bases, rows = [], 0
    for g in groups:
        bases.append(rows)
        rows += len(g.tokens) * (g.vocab + 1)  # one zero row per candidate for padding
    longest = max((len(t) for g in groups for t in g.tokens), default=0)
    words = max(1, -(-longest // _WORD))
    table = np.zeros((words, max(rows, 1)), dtype=np.uint64)
    a_rows, b_rows = [], []
    steps = max((sorted(len(t) for t in g.tokens)[-2] for g in groups if len(g.tokens) > 1), default=0)
    for g, base, (left, right) in zip(groups, bases, pairs):
        stride = g.vocab + 1
        lengths = np.array([len(t) for t in g.tokens], dtype=np.int64)
        owner = np.repeat(np.arange(len(g.tokens)), lengths)
        pos = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = np.concatenate(g.tokens) if len(owner) else np.zeros(0, np.int64)
        np.bitwise_or.at(
            table,
            (pos // _WORD, base + owner * stride + flat),
            np.left_shift(np.uint64(1), (pos % _WORD).astype(np.uint64)),
        )
        padded = np.full((len(g.tokens), max(int(lengths.max(initial=0)), steps, 1)), g.vocab, dtype=np.int64)
        padded[owner, pos] = flat
        swap = lengths[left] < lengths[right]  # bits on the longer side, iterate over the shorter one
        a_rows.append(base + np.where(swap, right, left) * stride)
        b_rows.append(padded[np.where(swap, left, right), :steps])
    a_row = np.concatenate(a_rows)
    tokens = np.concatenate(b_rows)
    v = np.full((words, len(a_row)), np.iinfo(np.uint64).max, dtype=np.uint64)
    for step in range(steps):
        index = a_row + tokens[:, step]
        carry = np.zeros(len(a_row), dtype=bool)
        for w in range(words):
            u = v[w] & table[w][index]
            total = v[w] + u
            overflow = total < u
            total += carry.astype(np.uint64)
            carry = overflow | (carry & (total == 0))
            v[w] = total | (v[w] & ~u)
    lcs = words * _WORD - np.bitwise_count(v).sum(axis=0).astype(np.int64)
    out, at = [], 0
    for left, _ in pairs:
        out.append(lcs[at : at + len(left)])
        at += len(left)
    return out


def _rouge_l(groups: list[_Group]) -> list[np.ndarray]:
    """The LCS length of every pair of distinct candidates of each group, as (m, m) arrays."""
    results: list[np.ndarray] = []
    chunk: list[_Group] = []
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    size = 0

    def flush() -> None:
        if chunk:
            for g, (left, right), lcs in zip(chunk, pairs, _lcs_chunk(chunk, pairs)):
                m = len(g.tokens)
                full = np.zeros((m, m))
                full[left, right] = lcs
                full[right, left] = lcs
                full[np.arange(m), np.arange(m)] = [len(t) for t in g.tokens]
                results.append(full)
        chunk.clear()
        pairs.clear()

    for g in groups:
        left, right = np.triu_indices(len(g.tokens), k=1)
        if size and size + len(left) > PAIRS_PER_CHUNK:
            flush()
            size = 0
        chunk.append(g)
        pairs.append((left, right))
        size += len(left)
    flush()
    return results


def pairwise_f1(groups: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """For each group (one dialogue's candidates), a (3, n, n) array: ROUGE-1, -2 and -L F1 of candidate i as the
    prediction against candidate j as the reference, exactly as `metric.pair_f1(c_i, c_j)` computes them."""
    encoded = _encode(groups)
    lcs = _rouge_l(encoded)
    out = []
    for g, common in zip(encoded, lcs):
        lengths = np.array([len(t) for t in g.tokens], dtype=np.float64)
        bigrams = [t[:-1] * (g.vocab + 1) + t[1:] for t in g.tokens]
        pred, target = lengths[:, None], lengths[None, :]
        r1 = _f1(_overlap(g.tokens), pred, target)
        r2 = _f1(_overlap(bigrams), np.maximum(pred - 1, 0), np.maximum(target - 1, 0))
        with np.errstate(invalid="ignore", divide="ignore"):
            p, r = common / pred, common / target
            rl = np.where((pred > 0) & (target > 0) & (p + r > 0), 2 * p * r / (p + r), 0.0)
        scores = np.stack([r1, r2, rl])
        out.append(scores[:, g.expand][:, :, g.expand])
    return out


def utility(f1: np.ndarray, metric_weights: Sequence[float] | None = None) -> np.ndarray:
    """(n, n) utilities on 0..100 from a (3, n, n) F1 array: the competition score (equal weights) or a weighted
    mean of ROUGE-1/2/L."""
    w = [1.0, 1.0, 1.0] if metric_weights is None else [float(x) for x in metric_weights]
    if len(w) != len(METRICS) or min(w) < 0 or sum(w) <= 0:
        raise ValueError(
            f"metric weights must be three non-negative numbers (ROUGE-1, -2, -L) with a positive sum, got {w}"
        )
    return 100.0 * (w[0] * f1[0] + w[1] * f1[1] + w[2] * f1[2]) / sum(w)


def utilities(groups: Sequence[Sequence[str]], metric_weights: Sequence[float] | None = None) -> list[np.ndarray]:
    """The (n, n) utility matrix of each group: `metric.similarity(c_i, c_j)` with the default weights."""
    return [utility(f1, metric_weights) for f1 in pairwise_f1(groups)]


def expected_utilities(matrix: np.ndarray, weights: Sequence[float], groups: Sequence[str] | None = None) -> np.ndarray:
    """EU(i): the weighted mean utility of candidate i against every other candidate (uniform over the others
    when their weights sum to 0; a lone candidate gets 100). With `groups` (e.g. the model that drew each
    candidate), only candidates of other groups support candidate i, so a group cannot vote for itself by drawing
    near-duplicates; a candidate with no other group to ask falls back to every other candidate."""
    n = len(matrix)
    w = np.asarray(weights, dtype=float)
    if n == 1:
        return np.array([100.0])
    others = np.broadcast_to(w, (n, n)).copy()
    np.fill_diagonal(others, 0.0)
    uniform = 1.0 - np.eye(n)
    if groups is not None:
        labels = np.asarray(groups)
        foreign = labels[:, None] != labels[None, :]
        alone = ~foreign.any(axis=1)
        others = np.where(foreign | alone[:, None], others, 0.0)
        uniform = np.where(foreign | alone[:, None], uniform, 0.0)
    totals = others.sum(axis=1)
    counts = np.maximum(uniform.sum(axis=1), 1.0)
    share = np.where(
        totals[:, None] > 0, others / np.where(totals > 0, totals, 1.0)[:, None], uniform / counts[:, None]
    )
    return (share * matrix).sum(axis=1)


def pick(matrix: np.ndarray, weights: Sequence[float], groups: Sequence[str] | None = None) -> int:
    """The MBR choice: highest expected utility; ties to the higher weight, then the earlier candidate."""
    eu = np.round(expected_utilities(matrix, weights, groups), 9)
    return max(range(len(eu)), key=lambda i: (eu[i], weights[i], -i))


def select(
    groups: Sequence[Sequence[str]],
    weights: Sequence[Sequence[float]] | None = None,
    metric_weights: Sequence[float] | None = None,
) -> list[int]:
    """The MBR choice (an index) in each group; `weights` per candidate, uniform by default."""
    matrices = utilities(groups, metric_weights)
    if weights is None:
        weights = [[1.0] * len(g) for g in groups]
    return [pick(m, w) for m, w in zip(matrices, weights)]
