"""Champion registry on a local folder and on a real S3 endpoint (moto_server): promotion, races, rollback."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from dialsum.data import write_submission
from dialsum.errors import DialsumError
from dialsum.release import registry
from dialsum.storage import Storage, open_storage, publish

DEV = {"dev_0": "#Person1#는 은행에서 새 계좌를 만든다.", "dev_1": "#Person2#는 감기에 걸려 병원에 간다.",
       "dev_2": "#Person1#와 #Person2#는 저녁으로 김치찌개를 먹기로 한다."}
WRONG = {f: "완전히 다른 이야기: 날씨가 맑다." for f in DEV}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "store"))
    return open_storage(f"s3://{request.getfixturevalue('s3_bucket')}/team")


def publish_run(store: Storage, tmp: Path, run_id: str, score: float, dev_sha: str = "dev-a",
                predictions: dict[str, str] = DEV) -> dict:
    """A published run with one model and an ensemble, as train-all leaves it; returns its champion entry."""
    model = tmp / run_id / "m1"
    write_submission(model / "predictions" / "dev.csv", list(predictions), list(predictions.values()))
    (model / "metrics.json").write_text(json.dumps({"model": "m1", "dev": {"score": score}}))
    extra = {"config_sha256": "cfg", "data_sha256": f"data-{dev_sha}", "dev_sha256": dev_sha, "code_sha256": "code"}
    publish(model, run_id, "m1", storage=store, extra=extra)
    ens = tmp / run_id / "ensemble"
    write_submission(ens / "predictions" / "dev.csv", list(predictions), list(predictions.values()))
    summary = {"run_id": run_id, "choice": "best_single", "dev_score": score, "weights": {"m1": 1.0},
               "dev_scores": {"m1": score}, "dev_sha256": dev_sha, "rows": {"dev_scored": len(predictions)}}
    (ens / "ensemble.json").write_text(json.dumps(summary))
    publish(ens, run_id, "ensemble", storage=store)
    return registry.describe(store, run_id)


def test_a_better_challenger_is_promoted_and_a_worse_one_is_not(store: Storage, tmp_path: Path) -> None:
    first = publish_run(store, tmp_path, "run-1", 40.0)
    assert first["kind"] == "ensemble" and first["members"] == ["m1"] and first["config_sha256"] == {"m1": "cfg"}
    decision = registry.promote(store, first)
    assert decision.promoted and decision.reason == "no champion yet" and decision.generation == 1

    better = registry.promote(store, publish_run(store, tmp_path, "run-2", 45.0), margin=1.0)
    assert better.promoted and "beats the champion's 40.00 by 5.00" in better.reason

    worse = registry.promote(store, publish_run(store, tmp_path, "run-3", 44.0))
    assert not worse.promoted
    assert worse.reason == "dev score 44.00 does not beat the champion's 45.00 (on the same dev data)"
    slight = registry.promote(store, publish_run(store, tmp_path, "run-4", 45.3), margin=0.5)
    assert not slight.promoted and "below the margin 0.50" in slight.reason

    current = registry.current(store)
    assert current.champion["run_id"] == "run-2" and current.generation == 2
    assert json.loads(store.read_bytes(registry.POINTER))["champion"]["run_id"] == "run-2"
    assert [r.champion["run_id"] for r in registry.history(store)] == ["run-1", "run-2"]
    assert registry.promote(store, registry.describe(store, "run-3"), policy="never").promoted is False
    assert registry.promote(store, registry.describe(store, "run-3"), policy="always").promoted


def test_concurrent_promotions_have_exactly_one_winner(
    store: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.promote(store, publish_run(store, tmp_path, "base", 10.0))
    # Equal scores. Half the racers read the champion and then wait until all of them have read it, so they
    # really race for generation 2; the others start whenever, and a late one is refused on score instead.
    challengers = [publish_run(store, tmp_path, f"race-{i}", 20.0) for i in range(6)]
    barrier = threading.Barrier(len(challengers))
    readers = threading.Barrier(3)
    read = registry.current

    def current_then_wait(s):
        record = read(s)
        if threading.current_thread().name in {"race-0", "race-1", "race-2"}:
            readers.wait()
        return record

    monkeypatch.setattr(registry, "current", current_then_wait)
    decisions: dict[str, registry.Decision] = {}

    def race(challenger: dict) -> None:
        barrier.wait()
        decisions[challenger["run_id"]] = registry.promote(store, challenger)

    threads = [threading.Thread(target=race, args=(c,), name=c["run_id"]) for c in challengers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winners = [run for run, d in decisions.items() if d.promoted]
    assert len(winners) == 1, decisions
    losers = [d for d in decisions.values() if not d.promoted]
    assert all(("became generation 2 first" in d.reason and winners[0] in d.reason)
               or "does not beat the champion's 20.00" in d.reason for d in losers)
    assert any("became generation 2 first" in d.reason for d in losers)
    records = registry.history(store)
    assert [r.generation for r in records] == [1, 2]
    assert records[1].champion["run_id"] == winners[0] and records[1].previous == 1
    assert registry.current(store).champion["run_id"] == winners[0]


def test_rollback_restores_the_previous_champion(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(DialsumError, match="nothing to roll back"):
        registry.rollback(store)
    for run, score in [("r1", 10.0), ("r2", 20.0), ("r3", 30.0)]:
        registry.promote(store, publish_run(store, tmp_path, run, score))
    assert registry.rollback(store).champion["run_id"] == "r2"
    assert registry.current(store).champion["run_id"] == "r2"
    assert registry.rollback(store).champion["run_id"] == "r1"
    with pytest.raises(DialsumError, match="no predecessor"):
        registry.rollback(store)
    assert [(r.action, r.champion["run_id"]) for r in registry.history(store)] == [
        ("promote", "r1"), ("promote", "r2"), ("promote", "r3"), ("rollback", "r2"), ("rollback", "r1")]


def test_a_different_dev_set_rescores_the_champion_or_says_why_not(store: Storage, tmp_path: Path) -> None:
    registry.promote(store, publish_run(store, tmp_path, "old", 90.0, dev_sha="dev-a", predictions=WRONG))
    challenger = publish_run(store, tmp_path, "new", 50.0, dev_sha="dev-b")

    unknown = registry.promote(store, challenger)
    assert not unknown.promoted and "no references" in unknown.reason

    # The champion's saved predictions are junk against the new references: it re-scores far below 50.
    rescored = registry.promote(store, challenger, references=DEV)
    assert rescored.promoted and "re-scored on the new dev set (3 dialogues)" in rescored.reason
    assert rescored.champion_score < 10

    more_rows = {**DEV, "dev_9": "새 대화의 요약."}
    newest = publish_run(store, tmp_path, "newest", 99.0, dev_sha="dev-c")
    refused = registry.promote(store, newest, references=more_rows)
    assert not refused.promoted
    assert "cover 3 of the 4 dialogues of the new dev set (missing e.g. dev_9)" in refused.reason


def test_a_pointer_left_behind_is_caught_up(store: Storage, tmp_path: Path) -> None:
    registry.promote(store, publish_run(store, tmp_path, "a", 10.0))
    stale = store.read_bytes(registry.POINTER)
    registry.promote(store, publish_run(store, tmp_path, "b", 20.0))
    store.write_bytes(registry.POINTER, stale)  # a writer that crashed after creating generation 2
    assert registry.current(store).champion["run_id"] == "b"
    assert json.loads(store.read_bytes(registry.POINTER))["generation"] == 2


def test_create_bytes_is_create_only(store: Storage) -> None:
    assert store.create_bytes("x/one.json", b"1")
    assert not store.create_bytes("x/one.json", b"2")
    data, tag = store.read_tagged("x/one.json")
    assert data == b"1"
    assert store.replace_if("x/one.json", b"3", tag)
    assert not store.replace_if("x/one.json", b"4", tag)
    assert store.read_bytes("x/one.json") == b"3"


def test_an_ensemble_that_reuses_an_unchanged_model_names_where_it_was_trained(store: Storage, tmp_path: Path) -> None:
    publish_run(store, tmp_path, "run-1", 40.0)
    ens = tmp_path / "run-2" / "ensemble"
    write_submission(ens / "predictions" / "dev.csv", list(DEV), list(DEV.values()))
    summary = {"run_id": "run-2", "choice": "best_single", "dev_score": 40.0, "weights": {"m1": 1.0},
               "dev_scores": {"m1": 40.0}, "dev_sha256": "dev-a", "sources": {"m1": "run-1"}}
    (ens / "ensemble.json").write_text(json.dumps(summary))
    publish(ens, "run-2", "ensemble", storage=store)
    entry = registry.describe(store, "run-2")
    assert entry["sources"] == {"m1": "run-1"} and entry["config_sha256"] == {"m1": "cfg"}
