"""Ensemble strategies on constructed candidates, and publishing from (and to) storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dialsum.data import read_submission, write_submission
from dialsum.errors import StorageError
from dialsum.release.ensemble import (
    BEST_SINGLE, CONSENSUS, best_model, build_ensemble, combine, consensus_pick, normalised_weights, publish_ensemble,
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


def dev_only(rows: dict[str, dict[str, str]]) -> dict[str, dict[str, dict[str, str]]]:
    return {model: {"dev": preds} for model, preds in rows.items()}


def test_consensus_picks_the_majority_like_summary() -> None:
    options = {"a": MEETING, "b": MEETING_2, "c": MEETING, "d": TRIP}
    weights = normalised_weights({"a": 10, "b": 10, "c": 10, "d": 70})
    assert consensus_pick(options, weights) in {"a", "c"}


@pytest.mark.parametrize(("scores", "winners"), [
    ({"a": 40, "b": 40, "c": 10, "d": 10}, {"a", "b"}),
    ({"a": 10, "b": 10, "c": 40, "d": 40}, {"c", "d"}),
])
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
    wrong = {"a": "dev_0", "b": "dev_1", "c": "dev_2"}
    candidates = {
        m: {"dev": {f: JUNK[f] if f == wrong[m] else REFS[f] for f in REFS}, "test": {"t0": f"{m} test"}}
        for m in wrong
    }
    result = build_ensemble(candidates, {"a": 30, "b": 20, "c": 10}, REFS)
    assert result.choice == CONSENSUS
    assert result.predictions["dev"] == REFS
    assert result.strategy_scores[CONSENSUS] == pytest.approx(100)
    assert result.strategy_scores[CONSENSUS] > result.strategy_scores[BEST_SINGLE]
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
    candidates = dev_only({"good": dict(REFS), "bad1": dict(JUNK), "bad2": dict(JUNK)})
    result = build_ensemble(candidates, {"good": 50, "bad1": 10, "bad2": 10}, REFS)
    assert result.consensus_picks["bad1"] + result.consensus_picks["bad2"] == len(REFS)
    assert result.choice == BEST_SINGLE
    assert result.best_model == "good"
    assert result.predictions["dev"] == REFS
    assert result.dev_score == pytest.approx(100)


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


def test_an_ensemble_needs_dev_predictions() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        build_ensemble({}, {}, REFS)
    with pytest.raises(ValueError, match="share no dev dialogue"):
        build_ensemble(dev_only({"a": {"other": "x"}}), {"a": 1}, REFS)


# ---------------------------------------------------------------- storage


def publish_model(store: LocalStorage, root: Path, run_id: str, model: str, dev: dict[str, str], score: float) -> None:
    folder = root / model
    write_submission(folder / "predictions" / "dev.csv", list(dev), list(dev.values()))
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
