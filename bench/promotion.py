"""Promotion: how often `--promote if-better` promotes a challenger with no real gain, and how often a real gain.

No training: per-row dev scores are simulated with the spread of the real dev set (its row count and the real
fnames' split from ../shared/data/competition/dev.csv when present, else 499 rows; per-row sd 8 points) and a
realistic correlation between two systems on the same rows (`RHO`: a share of each row's score is its difficulty,
common to every system). A system's row score is difficulty + the run's own noise + its checkpoint's noise; a run
ships the best of `EVALUATIONS` checkpoints, chosen on the rows its rule lets choose.

Rules compared, each a promotion test (paired comparison of challenger and champion on the challenger's held-out
rows, promote when the one-sided lower bound is above the margin):

* `today`: the best step chosen on dev rows 1-200 in file order; a sweep ranks trials on all of dev; the held-out
  rows are a hash half of dev (seed 0), 105 of them among rows 1-200 on the real dev set; 95% interval.
* `shipped`: one split for every choice (`data.holdout`): the best step and the sweep choose on the selection
  part; the held-out part (`DIALSUM_HELD_OUT_FRACTION`) only reports. One decision (`champion promote`, also after
  a sweep) uses `registry.PROMOTION_CONFIDENCE`; nightly decisions (`train-all --promote if-better`), repeated on
  the same held-out rows, use the stricter `registry.NIGHTLY_CONFIDENCE`: `shipped_nightly`.

Figures per rule: the false-promotion rate with no real gain for one decision, for the best trial of a 16-trial
sweep, and for at least one promotion over 30 nightly decisions (a fresh challenger each night against the champion
in service); the power at +0.5, +1 and +2 points. The promotion test uses the normal bound of the paired mean
(what the paired bootstrap's percentile bound estimates); `bootstrap_agreement` checks it against
`stats.paired_bootstrap` on a sample of decisions.

    python bench/promotion.py            # writes bench/results/promotion.json
    python bench/promotion.py --smoke    # a few seconds; writes its JSON to a temp folder
"""

from __future__ import annotations

import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEV_CSV, shared_dir, sized, write_result  # noqa: E402

from dialsum.data.holdout import DevSplit  # noqa: E402
from dialsum.release.registry import NIGHTLY_CONFIDENCE, PROMOTION_CONFIDENCE  # noqa: E402
from dialsum.release.stats import paired_bootstrap  # noqa: E402
from dialsum.settings import get_settings  # noqa: E402

SD, RHO, EVALUATIONS, SCORE_ROWS = 8.0, 0.5, 5, 200
RUN_SHARE = 0.5  # of the non-difficulty variance: the run's own noise; the rest differs between its checkpoints
TRIALS, NIGHTS, GAINS = 16, 30, (0.5, 1.0, 2.0)


def dev_fnames() -> tuple[list[str], str]:
    shared = shared_dir()
    if shared is not None and (shared / DEV_CSV).is_file():
        import csv

        with open(shared / DEV_CSV, encoding="utf-8") as handle:
            return [row["fname"] for row in csv.DictReader(handle)], "../shared/data/competition/dev.csv"
    return [f"dev_{i}" for i in range(499)], "499 synthetic fnames (no shared data)"


class Rule:
    """Which rows choose the best step and the sweep's trial, which rows test, and the one-sided level."""

    def __init__(self, name: str, fnames: list[str], fraction: float, confidence: float, legacy: bool) -> None:
        self.name, self.confidence, self.legacy = name, confidence, legacy
        n = len(fnames)
        split = DevSplit(0, fraction)
        held = np.array([split.is_held_out(f) for f in fnames])
        self.test = held
        self.step_rows = (np.arange(n) < SCORE_ROWS) if legacy else ~held
        self.sweep_rows = np.ones(n, bool) if legacy else ~held
        self.z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
        self.fraction = fraction

    def describe(self) -> dict:
        return {
            "held_out_rows": int(self.test.sum()),
            "step_rows": int(self.step_rows.sum()),
            "sweep_rows": int(self.sweep_rows.sum()),
            "overlap_test_and_choice": int((self.test & (self.step_rows | self.sweep_rows)).sum()),
            "confidence": self.confidence,
            "one_sided_level": round((1 - self.confidence) / 2, 5),
            "held_out_fraction": self.fraction,
            "choices_on": "dev rows 1-200 (best step), all dev (sweep)" if self.legacy else "the selection part",
        }


def runs(rng: np.random.Generator, sims: int, n: int, rule: Rule, gain: float = 0.0) -> np.ndarray:
    """(sims, n) per-row scores (minus difficulty) of runs that each ship their best checkpoint."""
    noise = SD * np.sqrt(1 - RHO)
    own = rng.normal(0, noise * np.sqrt(RUN_SHARE), (sims, 1, n))
    ckpt = rng.normal(0, noise * np.sqrt(1 - RUN_SHARE), (sims, EVALUATIONS, n))
    scores = own + ckpt + gain
    best = scores[:, :, rule.step_rows].mean(axis=2).argmax(axis=1)
    return scores[np.arange(sims), best]


def promoted(rule: Rule, challenger: np.ndarray, champion: np.ndarray, margin: float = 0.0) -> np.ndarray:
    d = (challenger - champion)[..., rule.test]
    lower = d.mean(axis=-1) - rule.z * d.std(axis=-1, ddof=1) / np.sqrt(d.shape[-1])
    return lower > margin


def one_decision(rng, rule: Rule, n: int, sims: int, gain: float = 0.0) -> float:
    return float(promoted(rule, runs(rng, sims, n, rule, gain), runs(rng, sims, n, rule)).mean())


def after_sweep(rng, rule: Rule, n: int, sims: int) -> float:
    """The best of TRIALS trials (ranked on the rule's sweep rows) promoted against an equal champion."""
    trials = np.stack([runs(rng, sims, n, rule) for _ in range(TRIALS)], axis=1)
    best = trials[:, :, rule.sweep_rows].mean(axis=2).argmax(axis=1)
    return float(promoted(rule, trials[np.arange(sims), best], runs(rng, sims, n, rule)).mean())


def nightly(rng, rule: Rule, n: int, sims: int) -> float:
    """At least one promotion in NIGHTS nights, a fresh equal challenger each night (the winner stays in service)."""
    champion, ever = runs(rng, sims, n, rule), np.zeros(sims, bool)
    for _ in range(NIGHTS):
        challenger = runs(rng, sims, n, rule)
        won = promoted(rule, challenger, champion)
        champion = np.where(won[:, None], challenger, champion)
        ever |= won
    return float(ever.mean())


def bootstrap_agreement(rng, rule: Rule, n: int, sims: int) -> float:
    """Share of decisions where the normal bound and `stats.paired_bootstrap`'s percentile bound agree."""
    a, b = runs(rng, sims, n, rule, 1.0), runs(rng, sims, n, rule)
    fast = promoted(rule, a, b)
    slow = [paired_bootstrap(a[i, rule.test], b[i, rule.test], confidence=rule.confidence).low > 0 for i in range(sims)]
    return float(np.mean(fast == np.array(slow)))


def measure(rule: Rule, n: int, sims: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {
        **rule.describe(),
        "false_one_decision": one_decision(rng, rule, n, sims),
        "false_after_16_trial_sweep": after_sweep(rng, rule, n, max(sims // 4, 50)),
        "false_any_of_30_nights": nightly(rng, rule, n, max(sims // 4, 50)),
    }
    out.update({f"power_plus_{g}": one_decision(rng, rule, n, sims, g) for g in GAINS})
    out["bootstrap_agreement"] = bootstrap_agreement(rng, rule, n, sized(200, 10))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    fnames, source = dev_fnames()
    sims = sized(4000, 400)
    settings = get_settings()
    today = Rule("today", fnames, 0.5, 0.95, legacy=True)
    shipped = Rule("shipped", fnames, settings.held_out_fraction, PROMOTION_CONFIDENCE, legacy=False)
    nightly_rule = Rule("shipped_nightly", fnames, settings.held_out_fraction, NIGHTLY_CONFIDENCE, legacy=False)
    grid = {}
    for fraction in sized((0.5, 0.6, 0.7), (0.6,)):
        for confidence in sized((0.99,), (0.99,)):
            rule = Rule("candidate", fnames, fraction, confidence, legacy=False)
            rng = np.random.default_rng(7)
            grid[f"fraction {fraction}, confidence {confidence}"] = {
                "false_one_decision": round(one_decision(rng, rule, len(fnames), sims), 4),
                "false_any_of_30_nights": round(nightly(rng, rule, len(fnames), max(sims // 4, 50)), 4),
                "power_plus_1.0": round(one_decision(rng, rule, len(fnames), sims, 1.0), 4),
            }
    before, after = measure(today, len(fnames), sims, 1), measure(shipped, len(fnames), sims, 1)
    nights = measure(nightly_rule, len(fnames), sims, 1)
    ok = (
        after["false_one_decision"] <= 0.05
        and after["false_after_16_trial_sweep"] <= 0.05
        and nights["false_any_of_30_nights"] <= 0.10
    )
    write_result(
        "promotion",
        "false promotions in 30 nights with no real gain",
        nights["false_any_of_30_nights"],
        before["false_any_of_30_nights"],
        round(nights["false_any_of_30_nights"] / before["false_any_of_30_nights"], 4),
        "shipped rules: one decision and the post-sweep decision <= 5%, 30 nightly decisions <= 10%, power as high "
        "as allowed",
        {
            "dev": {"rows": len(fnames), "source": source},
            "per_row_sd": SD,
            "correlation_between_systems": RHO,
            "evaluations_per_run": EVALUATIONS,
            "sweep_trials": TRIALS,
            "nights": NIGHTS,
            "simulations": sims,
            "today": before,
            "shipped": after,
            "shipped_nightly": nights,
            "shipped_meets_goal": ok,
            "grid": grid,
        },
    )


if __name__ == "__main__":
    main()
