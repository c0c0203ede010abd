"""The held-out split and the bootstrap intervals behind strategy choice and promotion."""

from __future__ import annotations

import numpy as np
import pytest

from dialsum.release import stats
from dialsum.settings import get_settings

FNAMES = [f"dev_{i}" for i in range(499)]


def test_the_split_is_seeded_by_fname_and_stable_when_rows_are_added() -> None:
    selection, held = stats.split_halves(FNAMES)
    assert set(selection).isdisjoint(held) and sorted(selection + held) == sorted(FNAMES)
    fraction = get_settings().held_out_fraction
    assert abs(len(held) - fraction * len(FNAMES)) < 0.1 * len(FNAMES)  # about the configured share is held out
    assert stats.split_halves(FNAMES) == (selection, held)
    grown_selection, grown_held = stats.split_halves(FNAMES + [f"new_{i}" for i in range(100)])
    assert set(selection) <= set(grown_selection) and set(held) <= set(grown_held)
    shuffled = list(reversed(FNAMES))
    assert set(stats.split_halves(shuffled)[0]) == set(selection)  # order does not matter
    other = stats.split_halves(FNAMES, seed=1)[0]
    assert set(other) != set(selection)


def test_paired_bootstrap_is_seeded_and_its_interval_covers_the_mean() -> None:
    rng = np.random.default_rng(0)
    theirs = rng.uniform(20, 70, 499)
    ours = theirs + rng.normal(0.5, 4.0, 499)
    first = stats.paired_bootstrap(ours, theirs)
    assert first == stats.paired_bootstrap(ours, theirs)
    assert first.low < first.mean < first.high and first.rows == 499
    assert first.mean == pytest.approx(float(np.mean(ours - theirs)))
    assert 0.5 < first.high - first.low < 1.2  # sd 4 over 499 rows: about +-0.35
    assert stats.paired_bootstrap(ours, theirs, seed=1) != first


def test_pairing_removes_what_both_systems_share() -> None:
    """Row difficulty varies by 20 points, the gain is a steady +1: paired, the interval is tight and above 0."""
    rng = np.random.default_rng(1)
    hardness = rng.normal(45, 20, 300)
    theirs, ours = hardness, hardness + 1.0 + rng.normal(0, 0.5, 300)
    assert stats.paired_bootstrap(ours, theirs).low > 0.8
    unpaired = stats.bootstrap_interval(ours).low - stats.bootstrap_interval(theirs).high
    assert unpaired < 0  # the two separate intervals overlap


def test_intervals_need_rows_and_matching_lengths() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        stats.bootstrap_interval([])
    with pytest.raises(ValueError, match="differ in number"):
        stats.paired_bootstrap([1.0, 2.0], [1.0])
    one = stats.bootstrap_interval([42.0])
    assert (one.mean, one.low, one.high) == (42.0, 42.0, 42.0)
    assert one.text() == "42.00 (95% CI 42.00 to 42.00)"
