"""MBR with the competition metric: the fast utility equals metric.score pair for pair, and the choice behaves."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from dialsum import metric
from dialsum.data import load_splits, read_split
from dialsum.release import mbr
from dialsum.release.strategies import (
    build_pool,
    consensus,
    mbr_picks,
    normalised_weights,
)


def _drop(text: str, rate: float, rng: random.Random) -> str:
    words = text.split()
    return " ".join(w for w in words if rng.random() >= rate) or words[0]


def _groups(summaries: list[str], n_groups: int, size: int, seed: int = 0) -> list[list[str]]:
    """Candidate-like texts: summaries of one group's length band, words dropped, plus empty and repeated ones."""
    rng = random.Random(seed)
    ranked = sorted(summaries, key=len)
    groups = []
    for g in range(n_groups):
        at = rng.randrange(len(ranked) - 4)
        band = ranked[at : at + 4]
        group = [_drop(rng.choice(band), rng.choice([0.0, 0.1, 0.3, 0.6]), rng) for _ in range(size)]
        group[rng.randrange(size)] = group[0]  # a repeated candidate
        if g % 5 == 0:
            group[-1] = ""  # an empty one
        groups.append(group)
    return groups


def _sample_pairs(summaries: list[str], pairs: int = 200) -> tuple[list[list[str]], list[tuple[int, int, int]]]:
    groups = _groups(summaries, 20, 10)
    rng = random.Random(1)
    chosen = rng.sample([(g, i, j) for g in range(20) for i in range(10) for j in range(10)], pairs)
    return groups, chosen


def _assert_equal_to_metric_score(summaries: list[str]) -> None:
    groups, chosen = _sample_pairs(summaries)
    matrices = mbr.utilities(groups)
    for g, i, j in chosen:
        assert matrices[g][i, j] == metric.score([groups[g][i]], [groups[g][j]])["score"], (groups[g][i], groups[g][j])


def test_the_fast_utility_equals_metric_score_on_a_200_pair_sample() -> None:
    _assert_equal_to_metric_score([ex.summary for ex in load_splits(None, splits=("dev",))["dev"]])


def test_the_fast_utility_equals_metric_score_on_200_pairs_of_the_real_dev_set(shared_data: Path) -> None:
    _assert_equal_to_metric_score([ex.summary for ex in read_split(shared_data / "competition" / "dev.csv", "dev")])


def test_long_texts_need_several_machine_words_and_still_match(shared_data: Path) -> None:
    """Dialogues run to hundreds of morphemes: the bit-parallel LCS carries across 64-bit words."""
    dev = read_split(shared_data / "competition" / "dev.csv", "dev")
    rng = random.Random(2)
    first, second = sorted(dev, key=lambda ex: -len(ex.dialogue))[:2]
    group = [first.dialogue, _drop(first.dialogue, 0.3, rng), second.dialogue, "짧은 요약이다."]
    assert max(len(metric.morphemes(t)) for t in group) > 128  # three 64-bit words
    matrix = mbr.utilities([group])[0]
    for i, a in enumerate(group):
        for j, b in enumerate(group):
            assert matrix[i, j] == metric.similarity(a, b)


def test_per_metric_f1_and_weights() -> None:
    a, b = "나는 사과를 먹었다", "나는 배를 먹었다"
    f1 = mbr.pairwise_f1([[a, b]])[0]
    assert f1[:, 0, 1].tolist() == pytest.approx([6 / 7, 4 / 6, 6 / 7])
    assert mbr.utility(f1, [0, 1, 0])[0, 1] == pytest.approx(100 * 4 / 6)
    with pytest.raises(ValueError, match="three non-negative"):
        mbr.utility(f1, [1, 1])


def test_mbr_over_identical_candidates_returns_that_candidate() -> None:
    text = "#Person1#는 내일 회의 시간을 오후 세 시로 바꾸자고 제안한다."
    group = [text] * 5
    assert mbr.select([group]) == [0]
    assert group[mbr.select([group], weights=[[0.1, 0.5, 0.2, 0.1, 0.1]])[0]] == text
    assert mbr.select([[text]]) == [0]


def test_mbr_picks_the_candidate_closest_to_the_rest() -> None:
    base = "#Person2#는 주말에 가족과 함께 부산으로 여행을 간다."
    group = [
        "완전히 다른 이야기: 날씨가 맑고 하늘이 푸르다.",
        base.replace("가족과", "친구와"),
        base,
        base.replace("부산으로", "제주로"),
        base.replace(" 함께", ""),
    ]
    assert mbr.select([group]) == [2]


def test_weights_decide_between_two_camps() -> None:
    trip = "#Person2#는 주말에 가족과 함께 부산으로 여행을 간다."
    meeting = "#Person1#는 내일 회의 시간을 오후 세 시로 바꾸자고 제안한다."
    group = [trip, trip.replace("가족과", "친구와"), meeting, meeting.replace("바꾸자고", "옮기자고")]
    assert mbr.select([group], weights=[[1, 1, 3, 3]])[0] in (2, 3)
    assert mbr.select([group], weights=[[3, 3, 1, 1]])[0] in (0, 1)


def test_with_one_candidate_per_model_pooled_mbr_picks_what_consensus_picks() -> None:
    dev = load_splits(None, splits=("dev",))["dev"]
    rng = random.Random(3)
    models = {
        m: {ex.fname: _drop(ex.summary, rate, rng) for ex in dev}
        for m, rate in (("a", 0.15), ("b", 0.3), ("c", 0.45), ("d", 0.3))
    }
    models["d"] = {f: (t if i % 3 else models["a"][f]) for i, (f, t) in enumerate(models["d"].items())}  # ties
    fnames = [ex.fname for ex in dev]
    for scores in (
        {"a": 40, "b": 35, "c": 20, "d": 35},
        {"a": 10, "b": 10, "c": 60, "d": 10},
        dict.fromkeys("abcd", 0),
    ):
        weights = normalised_weights(scores)
        picks = consensus(models, fnames, weights)
        pool = build_pool(models, {}, fnames)
        chosen = mbr_picks(pool, weights)
        assert [pool.texts[k][i] for k, i in enumerate(chosen)] == [models[picks[f]][f] for f in fnames]


def test_expected_utility_leaves_the_candidate_itself_out() -> None:
    matrix = np.array([[100.0, 10.0, 20.0], [10.0, 100.0, 70.0], [20.0, 70.0, 100.0]])
    assert mbr.expected_utilities(matrix, [1, 1, 1]).tolist() == pytest.approx([15.0, 40.0, 45.0])
    assert mbr.expected_utilities(matrix, [0, 0, 1]).tolist() == pytest.approx([20.0, 70.0, 45.0])  # 2: uniform
    assert mbr.pick(matrix, [1, 1, 1]) == 2


def test_pooled_mbr_never_picks_a_wrong_model_that_repeats_itself() -> None:
    """Two good models draw one varied summary each; a wrong model draws 8 near-duplicates of a wrong summary.
    Counting a model's own candidates as support makes the duplicates vote for each other; with support from
    other models only, the wrong model is never chosen."""
    rng = random.Random(3)
    summaries = [ex.summary for ex in load_splits(None, splits=("dev",))["dev"]]
    refs = {f"dev_{i}": s for i, s in enumerate(summaries)}
    preds, nbest = {"good-a": {}, "good-b": {}, "wrong": {}}, {"good-a": {}, "good-b": {}, "wrong": {}}
    for i, (f, ref) in enumerate(refs.items()):
        other = summaries[(i + 7) % len(summaries)]  # fluent, but about another dialogue
        for m in ("good-a", "good-b"):
            nbest[m][f] = [_drop(ref, 0.15, rng)]
        nbest["wrong"][f] = [_drop(other, 0.05, rng) for _ in range(8)]
        for m in preds:
            preds[m][f] = nbest[m][f][0]
    fnames = list(refs)
    pool = build_pool(preds, nbest, fnames, refs)
    weights = normalised_weights({"good-a": 1.0, "good-b": 1.0, "wrong": 1.0})
    picks = mbr_picks(pool, weights)
    assert all(owners[i][0] != "wrong" for owners, i in zip(pool.owners, picks))
    self_support = []  # the same pool with a model's own candidates counted as support
    for owners, f1 in zip(pool.owners, pool.f1):
        n = len(owners)
        w = [weights[m] / sum(o == m for o, _ in owners) for m, _ in owners]
        self_support.append(owners[mbr.pick(mbr.utility(f1[:, :n][:, :, :n]), w)][0])
    assert self_support.count("wrong") >= 5  # the case reproduces without the fix (11 of 48 rows)
