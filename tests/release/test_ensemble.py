"""Ensemble strategies on constructed candidates, the held-out choice, and publishing from (and to) storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dialsum import metric
from dialsum.data import (
    holdout,
    load_splits,
    read_submission,
    write_candidates,
    write_submission,
)
from dialsum.errors import StorageError
from dialsum.release import stats
from dialsum.release.ensemble import (
    BEST_SINGLE,
    CONSENSUS,
    MBR,
    best_model,
    build_ensemble,
    combine,
    consensus_pick,
    normalised_weights,
    publish_ensemble,
    read_outputs,
)
from dialsum.storage import LocalStorage, publish, read_manifest

MEETING = "#Person1#는 내일 회의 시간을 오후 세 시로 바꾸자고 제안한다."
MEETING_2 = "#Person1#는 내일 회의 시간을 오후 세 시로 옮기자고 제안한다."
TRIP = "#Person2#는 주말에 가족과 함께 부산으로 여행을 간다."
TRIP_2 = "#Person2#는 주말에 친구와 함께 부산으로 여행을 간다."
REFS = {
    "dev_0": "#Person1#는 은행에서 새 계좌를 만들고 카드를 신청한다.",
    "dev_1": "#Person2#는 감기에 걸려서 병원에 가서 약을 받는다.",
    "dev_2": "#Person1#와 #Person2#는 저녁으로 김치찌개를 먹기로 한다.",
}
JUNK = {f: f"완전히 다른 이야기 {i}: 날씨가 맑고 하늘이 푸르다." for i, f in enumerate(REFS)}
SAMPLE = {ex.fname: ex.summary for ex in load_splits(None, splits=("dev",))["dev"]}  # 48 dev rows
NOISE = {f: f"엉뚱한 이야기 {i}: 오늘은 비가 오고 바람이 분다." for i, f in enumerate(SAMPLE)}


def dev_only(rows: dict[str, dict[str, str]]) -> dict[str, dict[str, dict[str, str]]]:
    return {model: {"dev": preds} for model, preds in rows.items()}


def test_consensus_picks_the_majority_like_summary() -> None:
    options = {"a": MEETING, "b": MEETING_2, "c": MEETING, "d": TRIP}
    weights = normalised_weights({"a": 10, "b": 10, "c": 10, "d": 70})
    assert consensus_pick(options, weights) in {"a", "c"}


@pytest.mark.parametrize(
    ("scores", "winners"),
    [
        ({"a": 40, "b": 40, "c": 10, "d": 10}, {"a", "b"}),
        ({"a": 10, "b": 10, "c": 40, "d": 40}, {"c", "d"}),
    ],
)
def test_weights_change_the_choice(scores: dict[str, float], winners: set[str]) -> None:
    options = {"a": MEETING, "b": MEETING_2, "c": TRIP, "d": TRIP_2}
    assert consensus_pick(options, normalised_weights(scores)) in winners


def test_ties_go_to_the_higher_weight() -> None:
    options = {"a": MEETING, "b": TRIP}
    assert consensus_pick(options, normalised_weights({"a": 1, "b": 2})) == "b"
    assert consensus_pick(options, normalised_weights({"a": 2, "b": 1})) == "a"


def test_weights_are_normalised_and_uniform_without_signal() -> None:
    assert normalised_weights({"a": 30, "b": 10}) == {"a": 0.75, "b": 0.25}
    assert normalised_weights({"a": 0, "b": 0}) == {"a": 0.5, "b": 0.5}


def test_best_single_is_the_highest_dev_score() -> None:
    assert best_model({"a": 1.0, "b": 3.0, "c": 2.0}) == "b"
    assert best_model({"b": 2.0, "a": 2.0}) == "a"


def test_consensus_wins_when_it_scores_better_on_dev() -> None:
    wrong = {m: [f for i, f in enumerate(SAMPLE) if i % 3 == k] for k, m in enumerate("abc")}  # each wrong on a third
    candidates = {
        m: {"dev": {f: NOISE[f] if f in wrong[m] else SAMPLE[f] for f in SAMPLE}, "test": {"t0": f"{m} test"}}
        for m in wrong
    }
    result = build_ensemble(candidates, {"a": 30, "b": 20, "c": 10}, SAMPLE)
    assert result.choice == CONSENSUS
    assert result.predictions["dev"] == SAMPLE
    assert result.strategy_scores[CONSENSUS] == pytest.approx(100)
    assert result.held_out_score == pytest.approx(100)
    assert result.strategies[CONSENSUS]["selection"] > result.strategies[BEST_SINGLE]["selection"]
    assert result.strategies[CONSENSUS]["vs_best_single_low"] > 0  # consensus is better on the held-out rows too
    assert set(result.predictions["test"]) == {"t0"}


def test_combine_applies_a_chosen_strategy_to_new_predictions() -> None:
    """What `predict --run champion` does with an ensemble champion's members on new dialogues."""
    wrong = {"a": "dev_0", "b": "dev_1", "c": "dev_2"}
    new = {m: {"test": {f: JUNK[f] if f == wrong[m] else REFS[f] for f in REFS}} for m in wrong}
    scores = {"a": 30, "b": 20, "c": 10}
    assert combine(CONSENSUS, new, scores) == {"test": REFS}
    assert combine(BEST_SINGLE, new, scores) == {"test": new["a"]["test"]}
    with pytest.raises(ValueError, match="unknown ensemble strategy"):
        combine("vote", new, scores)


def test_best_single_wins_when_consensus_follows_agreeing_bad_models() -> None:
    candidates = dev_only({"good": dict(SAMPLE), "bad1": dict(NOISE), "bad2": dict(NOISE)})
    result = build_ensemble(candidates, {"good": 50, "bad1": 10, "bad2": 10}, SAMPLE)
    assert result.consensus_picks["bad1"] + result.consensus_picks["bad2"] == len(SAMPLE)
    assert result.choice == BEST_SINGLE
    assert result.best_model == "good"
    assert result.predictions["dev"] == SAMPLE
    assert result.dev_score == pytest.approx(100)


def test_the_choice_is_reported_on_rows_that_did_not_make_it() -> None:
    """A strategy that is perfect exactly on the selection half wins there, and its held-out score is measured on
    the other rows only: it is never reported with the rows that chose it."""
    selection, held = stats.split_halves(list(SAMPLE))
    lucky = {f: SAMPLE[f] if f in selection else NOISE[f] for f in SAMPLE}
    steady = {f: " ".join(SAMPLE[f].split()[:-2]) for f in SAMPLE}  # good everywhere, perfect nowhere
    nbest = {
        "steady": {"dev": {f: [steady[f], lucky[f]] for f in SAMPLE}},
        "lucky": {"dev": {f: [lucky[f], lucky[f], NOISE[f]] for f in SAMPLE}},
    }
    result = build_ensemble(
        dev_only({"steady": steady, "lucky": dict(NOISE)}), {"steady": 50, "lucky": 50}, SAMPLE, nbest=nbest
    )
    assert result.split == {
        "seed": 0,
        "held_out_fraction": holdout.dev_split().fraction,
        "selection_rows": len(selection),
        "held_out_rows": len(held),
        "held_out_sha256": holdout.fnames_hash(held),
        "selection": len(selection),
        "held_out": len(held),
    }
    assert result.held_out == held and set(result.held_out).isdisjoint(selection)
    assert result.choice == "mbr:lucky" and result.strategies["mbr:lucky"]["selection"] == pytest.approx(100)
    rows = metric.row_scores([NOISE[f] for f in held], [SAMPLE[f] for f in held])
    assert result.held_out_score == pytest.approx(sum(rows) / len(rows)) and result.held_out_score < 20
    assert result.best_model == "steady"  # best single is chosen on the selection half as well
    for name, row in result.strategies.items():
        assert row["held_out_low"] <= row["held_out"] <= row["held_out_high"], name
    assert result.row_scores == pytest.approx(
        dict(zip(SAMPLE, metric.row_scores([result.predictions["dev"][f] for f in SAMPLE], list(SAMPLE.values()))))
    )


def test_mbr_strategies_use_the_candidates_and_are_deterministic() -> None:
    words = {f: SAMPLE[f].split() for f in SAMPLE}
    nbest = {
        m: {"dev": {f: [" ".join(w[:k] + w[k + 1 :]) for k in range(shift, shift + 4)] for f, w in words.items()}}
        for m, shift in (("x", 0), ("y", 1))
    }
    preds = {m: {"dev": {f: c[-1] for f, c in nbest[m]["dev"].items()}} for m in nbest}
    first = build_ensemble(preds, {"x": 40, "y": 30}, SAMPLE, nbest=nbest)
    assert list(first.strategies) == [BEST_SINGLE, CONSENSUS, "mbr:x", "mbr:y", MBR]
    assert first.candidates == {"x": 4, "y": 4}
    assert first.scaling["sizes"] == [1, 2, 4] and set(first.scaling["series"]) == {MBR, "x", "y"}
    assert build_ensemble(preds, {"x": 40, "y": 30}, SAMPLE, nbest=nbest) == first
    other = build_ensemble(preds, {"x": 40, "y": 30}, SAMPLE, nbest=nbest, seed=7)
    assert other.split != first.split or other.held_out != first.held_out
    weighted = build_ensemble(
        preds, {"x": 40, "y": 30}, SAMPLE, nbest=nbest, model_weights={"x": 1, "y": 3}, metric_weights=[0, 1, 0]
    )
    assert weighted.weights == {"x": 0.25, "y": 0.75} and weighted.metric_weights == [0, 1, 0]
    assert (
        combine(
            weighted.choice,
            preds,
            {"x": 40, "y": 30},
            nbest,
            best=weighted.best_model,
            metric_weights=[0, 1, 0],
            weights={"x": 1, "y": 3},
        )["dev"]
        == weighted.predictions["dev"]
    )


def test_one_model_is_trivially_the_best_single() -> None:
    result = build_ensemble({"only": {"dev": dict(JUNK), "test": {"t0": TRIP}}}, {"only": 3.0}, REFS)
    assert (result.choice, result.best_model) == (BEST_SINGLE, "only")
    assert result.predictions == {"dev": JUNK, "test": {"t0": TRIP}}
    assert result.weights == {"only": 1.0}


def test_only_dialogues_every_model_predicted_are_used() -> None:
    candidates = dev_only({"a": dict(REFS), "b": {f: REFS[f] for f in ("dev_0", "dev_1")}})
    result = build_ensemble(candidates, {"a": 1, "b": 2}, REFS)
    assert result.rows["dev_scored"] == 2
    assert list(result.predictions["dev"]) == ["dev_0", "dev_1"]
    tiny = build_ensemble(dev_only({"a": {"dev_0": REFS["dev_0"]}}), {"a": 1}, REFS)
    assert tiny.held_out_score is None and tiny.split["held_out"] == 0  # one row cannot be split


def test_an_ensemble_needs_dev_predictions() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        build_ensemble({}, {}, REFS)
    with pytest.raises(ValueError, match="share no dev dialogue"):
        build_ensemble(dev_only({"a": {"other": "x"}}), {"a": 1}, REFS)


# ---------------------------------------------------------------- storage


def publish_model(
    store: LocalStorage,
    root: Path,
    run_id: str,
    model: str,
    dev: dict[str, str],
    score: float,
    nbest: dict[str, list[str]] | None = None,
) -> None:
    folder = root / model
    write_submission(folder / "predictions" / "dev.csv", list(dev), list(dev.values()))
    if nbest:
        rows = [[{"text": t, "logprob": -1.0 - k, "tokens": 5} for k, t in enumerate(nbest[f])] for f in dev]
        write_candidates(folder / "predictions" / "dev_candidates.jsonl", list(dev), rows)
    write_submission(folder / "predictions" / "test.csv", ["t0", "t1"], [f"{model} 0", f"{model} 1"])
    metrics = {"model": model, "type": "causal_lm", "run_id": run_id, "dev": {"score": score}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "model").mkdir()
    (folder / "model" / "weights.bin").write_bytes(b"\0" * 64)
    publish(folder, run_id, model, storage=store)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    lines = ["fname,dialogue,summary"] + [f'{f},"#Person1#: 안녕하세요.",{s}' for f, s in REFS.items()]
    (folder / "dev.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_published_candidates_are_read_back_and_ensembled_by_mbr(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    words = {f: SAMPLE[f].split() for f in SAMPLE}
    for model, shift in (("x", 0), ("y", 1)):
        nbest = {f: [" ".join(w[:k] + w[k + 1 :]) for k in range(shift, shift + 3)] for f, w in words.items()}
        publish_model(store, tmp_path / "runs", "r1", model, {f: c[0] for f, c in nbest.items()}, 40.0, nbest)
    assert read_outputs("r1", "x", store).candidates["dev"]["dev_0"][0] == " ".join(words["dev_0"][1:])

    published = publish_ensemble("r1", store, ["x", "y"], None)  # the bundled sample's dev set

    summary = json.loads((tmp_path / "store" / "r1" / "ensemble" / "ensemble.json").read_text(encoding="utf-8"))
    assert list(summary["strategies"]) == [BEST_SINGLE, CONSENSUS, "mbr:x", "mbr:y", MBR]
    assert summary["candidates"] == {"x": 3, "y": 3} and summary["scaling"]["sizes"] == [1, 2, 3]
    assert summary["held_out_score"] == published.result.held_out_score
    assert len(summary["row_scores"]) == 48 and set(summary["held_out"]) < set(SAMPLE)
    assert "MBR over the first N candidates" in published.report


def test_publish_ensemble_reads_models_back_from_storage(tmp_path: Path, data_dir: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    publish_model(store, tmp_path / "runs", "r1", "good", dict(REFS), 50.0)
    publish_model(store, tmp_path / "runs", "r1", "bad", dict(JUNK), 5.0)

    published = publish_ensemble("r1", store, ["good", "bad"], data_dir)

    manifest = read_manifest("r1", "ensemble", store)
    assert manifest is not None and manifest["extra"]["choice"] == published.result.choice == BEST_SINGLE
    files = {e["path"] for e in manifest["files"]}
    assert files == {"predictions/dev.csv", "predictions/test.csv", "ensemble.json", "report.md"}
    folder = tmp_path / "store" / "r1" / "ensemble"
    summary = json.loads((folder / "ensemble.json").read_text(encoding="utf-8"))
    assert summary["best_model"] == "good" and summary["dev_scores"] == {"bad": 5.0, "good": 50.0}
    assert summary["strategy_scores"][BEST_SINGLE] == pytest.approx(100)
    assert read_submission(folder / "predictions" / "dev.csv") == REFS
    assert read_submission(folder / "predictions" / "test.csv") == {"t0": "good 0", "t1": "good 1"}
    assert "**best_single**" in (folder / "report.md").read_text(encoding="utf-8") == published.report
    assert published.location == store.location("r1/ensemble/")


def test_reading_outputs_back_detects_a_changed_file(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    publish_model(store, tmp_path / "runs", "r1", "good", dict(REFS), 50.0)
    assert read_outputs("r1", "good", store).predictions["dev"] == REFS
    (tmp_path / "store" / "r1" / "good" / "predictions" / "dev.csv").write_text(",fname,summary\n0,dev_0,x\n")
    with pytest.raises(StorageError, match="checksum mismatch"):
        read_outputs("r1", "good", store)
    with pytest.raises(StorageError, match="not published"):
        read_outputs("r1", "missing", store)


def test_a_members_predictions_pass_through_unchanged(tmp_path):
    """What a model wrote is what an ensemble or the champion passes on: whitespace inside a summary is its own."""
    from dialsum.release import ensemble

    written = {"t0": "#Person1#는\t요약  둘\n 셋", "t1": "한 줄"}
    write_submission(tmp_path / "test.csv", list(written), list(written.values()))
    assert ensemble.read_predictions(tmp_path) == {"test": written}
    assert read_submission(tmp_path / "test.csv")["t0"] == "#Person1#는 요약 둘\n셋"  # scoring input stays normalized
