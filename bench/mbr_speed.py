"""MBR speed: 64 candidates for each of 998 dialogues, every pair scored with the competition metric.

Candidates are Korean text made from the real dev set (../shared): for dialogue g, its dev summary (row g mod 499;
each row serves twice with other draws) and the three dev summaries closest to it in length, each with words
dropped at random (rates 0 to 40%), 64 texts in all. Ours: `release.mbr.select` (every distinct text analysed
once through metric.py's morpheme analysis, ROUGE-1/2 on n-gram count arrays, bit-parallel LCS for ROUGE-L), the
whole n x n utility matrix of each dialogue and its pick, end to end. Baseline, in the same run: a
`metric.score([c_i], [c_j])` call for each of the 64 x 64 ordered pairs on a sample of dialogues (its morpheme
cache cleared first, so it analyses its texts once too), extrapolated to 998 dialogues. The sampled dialogues'
matrices and picks are checked equal between the two. Ours is the best of two runs (the machine is shared).

Usage: .venv/bin/python bench/mbr_speed.py            # writes bench/results/mbr_speed.json (needs ../shared)
       .venv/bin/python bench/mbr_speed.py --smoke    # tiny sizes in seconds; JSON to a temporary folder
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import dev_examples, require_shared, write_result  # noqa: E402

SIZES = {
    "full": {"dialogues": 998, "candidates": 64, "sample": 3, "repeats": 2},
    "smoke": {"dialogues": 6, "candidates": 8, "sample": 1, "repeats": 1},
}
DROP_RATES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)
SEED = 0


def make_candidates(summaries: list[str], dialogues: int, per_dialogue: int, seed: int = SEED) -> list[list[str]]:
    """For each dialogue: its summary and the three summaries nearest in length, words dropped at random."""
    rng = random.Random(seed)
    by_length = sorted(range(len(summaries)), key=lambda i: len(summaries[i]))
    rank = {i: r for r, i in enumerate(by_length)}
    groups = []
    for g in range(dialogues):
        own = g % len(summaries)
        r = rank[own]
        near = [by_length[k] for k in range(max(0, r - 2), min(len(summaries), r + 3)) if by_length[k] != own][:3]
        sources = [own] * (per_dialogue // 2) + [rng.choice(near) for _ in range(per_dialogue - per_dialogue // 2)]
        group = []
        for source in sources:
            rate = rng.choice(DROP_RATES)
            words = summaries[source].split()
            kept = [w for w in words if rng.random() >= rate] or words[:1]
            group.append(" ".join(kept))
        groups.append(group)
    return groups


def run_ours(groups: list[list[str]]) -> tuple[list[int], float, float, list]:
    """MBR picks for every group, end to end; also the seconds spent in morpheme analysis."""
    from dialsum import metric
    from dialsum.release import mbr

    analysis = 0.0
    analyse = metric.morphemes_many

    def timed(texts):
        nonlocal analysis
        started = time.perf_counter()
        try:
            return analyse(texts)
        finally:
            analysis += time.perf_counter() - started

    metric.morphemes_many = timed
    try:
        started = time.perf_counter()
        matrices = mbr.utilities(groups)
        picks = [mbr.pick(m, [1.0] * len(m)) for m in matrices]
        seconds = time.perf_counter() - started
    finally:
        metric.morphemes_many = analyse
    return picks, seconds, analysis, matrices


def run_baseline(groups: list[list[str]]) -> tuple[list[int], float, list]:
    """Pairwise `metric.score` calls: the whole matrix of each group, then the same pick."""
    import numpy as np

    from dialsum import metric
    from dialsum.release import mbr

    metric.morphemes.cache_clear()
    started = time.perf_counter()
    matrices = []
    for group in groups:
        matrix = np.array([[metric.score([a], [b])["score"] for b in group] for a in group])
        matrices.append(matrix)
    picks = [mbr.pick(m, [1.0] * len(m)) for m in matrices]
    return picks, time.perf_counter() - started, matrices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; the JSON goes to a temporary folder")
    args = parser.parse_args()
    size = SIZES["smoke" if args.smoke else "full"]
    load = os.getloadavg()  # before this benchmark adds its own
    shared = require_shared("mbr_speed")
    from dialsum import metric

    summaries = [ex.summary for ex in dev_examples(shared)]
    groups = make_candidates(summaries, size["dialogues"], size["candidates"])
    metric.morphemes("워밍업")  # load Kiwi outside the timings
    sample = [groups[i * len(groups) // size["sample"]] for i in range(size["sample"])]
    base_picks, base_seconds, base_matrices = run_baseline(sample)
    runs = [run_ours(groups) for _ in range(size["repeats"])]
    picks, seconds, analysis, matrices = min(runs, key=lambda r: r[1])
    at = [i * len(groups) // size["sample"] for i in range(size["sample"])]
    worst = max(float(abs(matrices[i] - m).max()) for i, m in zip(at, base_matrices))
    if worst > 1e-9 or [picks[i] for i in at] != base_picks:
        raise SystemExit(f"mbr_speed: fast utilities differ from metric.score (max {worst})")
    baseline = base_seconds / len(sample) * len(groups)
    n = size["candidates"]
    distinct = sum(len(set(g)) for g in groups)
    write_result(
        "mbr_speed",
        "seconds",
        round(seconds, 2),
        round(baseline, 1),
        round(baseline / seconds, 1),
        "ours <= 60 s on a 2-core machine and ratio >= 20",
        details={
            "data": "shared dev.csv summaries: each dialogue's own and the 3 nearest in length, words dropped",
            "dialogues": len(groups),
            "candidates": n,
            "candidates_squared": n * n,
            "pairs_scored": len(groups) * n * n,
            "distinct_texts": distinct,
            "ours": "release.mbr.utilities + pick: full n x n matrix per dialogue, analysis included",
            "ours_analysis_seconds": round(analysis, 2),
            "ours_pairwise_seconds": round(seconds - analysis, 2),
            "ours_runs_seconds": [round(r[1], 2) for r in runs],
            "baseline": f"metric.score([c_i], [c_j]) for all n x n pairs of {len(sample)} dialogues, extrapolated "
            f"to {len(groups)}",
            "baseline_measured_seconds": round(base_seconds, 2),
            "baseline_seconds_per_dialogue": round(base_seconds / len(sample), 3),
            "max_abs_difference": worst,
            "load_average_1_5_15_at_start": [round(x, 2) for x in load],
            "cpu_count": os.cpu_count(),
        },
    )


if __name__ == "__main__":
    main()
