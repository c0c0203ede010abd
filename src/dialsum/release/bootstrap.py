"""Uncertainty of a dev score and the split that keeps a search honest, each behind one function.

* `score_interval`: a percentile bootstrap over rows of the competition score (each row's mean ROUGE F1 × 100;
  the score is their mean), seeded.
* `heldout_split`: a seeded split of dialogues by fname into a search part and a held-out part; a search picks
  on the first and reports the winner once on the second.
"""

from __future__ import annotations

import hashlib
import random
from typing import Sequence

from dialsum import metric


def row_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Each row's competition score (0..100); their mean is `metric.score(...)["score"]`."""
    return [100.0 * sum(metric.pair_f1(p or "", r).values()) / len(metric.ROUGE_TYPES)
            for p, r in zip(predictions, references)]


def score_interval(predictions: Sequence[str], references: Sequence[str], seed: int = 0, resamples: int = 1000,
                   level: float = 0.95) -> tuple[float, float]:
    """A `level` percentile-bootstrap interval of the score over rows."""
    scores = row_scores(predictions, references)
    if not scores:
        raise ValueError("no rows to score")
    rng, n = random.Random(seed), len(scores)
    means = sorted(sum(scores[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    cut = (1 - level) / 2
    return round(means[int(cut * (resamples - 1))], 4), round(means[int((1 - cut) * (resamples - 1))], 4)


def heldout_split(fnames: Sequence[str], seed: int = 0, heldout: float = 0.5) -> tuple[list[str], list[str]]:
    """(search, held-out) fnames: each fname goes to the held-out part by a seeded hash of its name, so the split
    does not depend on row order and a new row never moves another."""
    def share(fname: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{seed}:{fname}".encode()).digest()[:8], "big") / 2**64

    search = [f for f in fnames if share(f) >= heldout]
    held = [f for f in fnames if share(f) < heldout]
    return search, held


def difference_interval(challenger: Sequence[str], baseline: Sequence[str], references: Sequence[str], seed: int = 0,
                        resamples: int = 1000, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the score difference challenger - baseline, paired by row (percentile bootstrap)."""
    diffs = [a - b for a, b in zip(row_scores(challenger, references), row_scores(baseline, references))]
    if not diffs:
        raise ValueError("no rows to score")
    rng, n = random.Random(seed), len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    cut = (1 - level) / 2
    return (round(sum(diffs) / n, 4), round(means[int(cut * (resamples - 1))], 4),
            round(means[int((1 - cut) * (resamples - 1))], 4))
