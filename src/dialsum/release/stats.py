"""Statistics for decisions on dev scores: the held-out split, bootstrap intervals and the paired bootstrap.

A 499-row dev mean moves by about ±0.7 points (95%) from the rows alone, so a decision is made on one set of
rows and its score is reported on others, and a comparison between two systems carries its interval:

* `split_halves(fnames, seed)`: the one dev split (`data.holdout`): each fname falls in the selection part or the
  held-out part by a seeded hash of the fname alone, so a row keeps its part whatever other rows the dev set holds
  (a grown dev set never moves a row that chose something into the held-out part), and every choice agrees on it.
* `bootstrap_interval(values)`: the mean of per-row scores and its 95% percentile interval.
* `paired_bootstrap(ours, theirs)`: the mean difference of two systems' scores on the same rows and its 95%
  interval, resampling rows (both systems together), seeded, 1,000 resamples by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dialsum.data.holdout import dev_split

RESAMPLES = 1000
CONFIDENCE = 0.95
SPLIT_SEED = None  # the configured split seed (`DIALSUM_SPLIT_SEED`)


@dataclass(frozen=True)
class Interval:
    """A mean over `rows` rows with its bootstrap interval (`confidence`, e.g. 0.95)."""

    mean: float
    low: float
    high: float
    rows: int
    confidence: float = CONFIDENCE

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "rows": self.rows, "confidence": self.confidence}

    def text(self, signed: bool = False) -> str:
        """'+1.23 (95% CI +0.10 to +2.40)'; unsigned for scores."""
        fmt = "{:+.2f}" if signed else "{:.2f}"
        return f"{fmt.format(self.mean)} ({self.confidence:.0%} CI {fmt.format(self.low)} to {fmt.format(self.high)})"


def in_selection_half(fname: str, seed: int | None = None) -> bool:
    """True when `fname` belongs to the part that chooses; False for the held-out part (`data.holdout`)."""
    return not dev_split(seed).is_held_out(fname)


def split_halves(fnames: Sequence[str], seed: int | None = None) -> tuple[list[str], list[str]]:
    """(selection, held_out): the fnames of each part of the one dev split (`data.holdout`), in the given order;
    `seed` replaces the configured split seed."""
    return dev_split(seed).parts(fnames)


def _resample_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 100):  # bounded memory for long rows
        rows = rng.integers(0, len(values), size=(min(100, resamples - start), len(values)))
        means[start : start + len(rows)] = values[rows].mean(axis=1)
    return means


def _interval(values: np.ndarray, resamples: int, seed: int, confidence: float) -> Interval:
    if len(values) == 0:
        raise ValueError("a bootstrap needs at least one row")
    means = _resample_means(values, resamples, seed)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high), len(values), confidence)


def bootstrap_interval(
    values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> Interval:
    """The mean of `values` (per-row scores) and its percentile bootstrap interval."""
    return _interval(np.asarray(values, dtype=float), resamples, seed, confidence)


def paired_bootstrap(
    ours: Sequence[float],
    theirs: Sequence[float],
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The mean of `ours - theirs` over the same rows and its interval: rows are resampled, each row's two scores
    together, so what both systems find hard does not widen the interval."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired rows differ in number: {len(a)} and {len(b)}")
    return _interval(a - b, resamples, seed, confidence)
