"""Champion registry on a local folder and on a real S3 endpoint (moto_server): promotion by a paired bootstrap on
the same dev rows, races, rollback, other dev data."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest

from dialsum import metric
from dialsum.cli.main import main
from dialsum.data import load_splits, write_submission
from dialsum.errors import DialsumError
from dialsum.release import registry
from dialsum.storage import Storage, open_storage, publish

DEV = {ex.fname: ex.summary for ex in load_splits(None, splits=("dev",))["dev"]}  # 48 rows
WRONG = {f: "완전히 다른 이야기: 날씨가 맑다." for f in DEV}


def drop(text: str, rate: float, rng: random.Random) -> str:
    words = text.split()
    return " ".join(w for w in words if rng.random() >= rate) or words[0]


def degraded(rate: float, seed: int) -> dict[str, str]:
    """Dev summaries with words dropped at random: a model `rate` worse, with noise of its own."""
    rng = random.Random(seed)
    return {f: drop(text, rate, rng) for f, text in DEV.items()}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "store"))
    return open_storage(f"s3://{request.getfixturevalue('s3_bucket')}/team")


def publish_run(
    store: Storage,
    tmp: Path,
    run_id: str,
    predictions: dict[str, str] = DEV,
    dev_sha: str = "dev-a",
    references: dict[str, str] | None = DEV,
    held_out: list[str] | None = None,
) -> dict:
    """A published run with one model and an ensemble, as train-all leaves it; returns its champion entry.
    `references`: what its per-row dev scores were measured against (None: a run from before they were published)."""
    rows = {f: metric.similarity(predictions[f], ref) for f, ref in references.items()} if references else None
    score = sum(rows.values()) / len(rows) if rows else 50.0
    model = tmp / run_id / "m1"
    write_submission(model / "predictions" / "dev.csv", list(predictions), list(predictions.values()))
    (model / "metrics.json").write_text(
        json.dumps({"model": "m1", "dev": {"score": score}} | ({"dev_row_scores": rows} if rows else {}))
    )
    extra = {"config_sha256": "cfg", "data_sha256": f"data-{dev_sha}", "dev_sha256": dev_sha, "code_sha256": "code"}
    publish(model, run_id, "m1", storage=store, extra=extra)
    ens = tmp / run_id / "ensemble"
    write_submission(ens / "predictions" / "dev.csv", list(predictions), list(predictions.values()))
    summary = {
        "run_id": run_id,
        "choice": "best_single",
        "dev_score": score,
        "weights": {"m1": 1.0},
        "dev_scores": {"m1": score},
        "dev_sha256": dev_sha,
        "rows": {"dev_scored": len(predictions)},
    }
    summary |= {"row_scores": rows, "held_out": held_out} if rows else {}
    (ens / "ensemble.json").write_text(json.dumps(summary))
    publish(ens, run_id, "ensemble", storage=store)
    return registry.describe(store, run_id)


def test_a_better_challenger_is_promoted_and_a_worse_one_is_not(store: Storage, tmp_path: Path) -> None:
    first = publish_run(store, tmp_path, "run-1", degraded(0.5, seed=1))
    assert first["kind"] == "ensemble" and first["members"] == ["m1"] and first["config_sha256"] == {"m1": "cfg"}
    decision = registry.promote(store, first)
    assert decision.promoted and decision.reason == "no champion yet" and decision.generation == 1

    better = registry.promote(store, publish_run(store, tmp_path, "run-2", DEV), margin=1.0)
    assert better.promoted and "by paired bootstrap on 48 dev rows, on the same dev data" in better.reason
    assert "the lower bound is above the margin 1.00" in better.reason
    assert better.comparison["low"] > 1.0 and better.comparison["rows"] == 48
    assert better.challenger_score == pytest.approx(100)

    worse = registry.promote(store, publish_run(store, tmp_path, "run-3", degraded(0.3, seed=3)))
    assert not worse.promoted and worse.reason.endswith("it does not beat the champion")
    assert worse.comparison["mean"] < 0

    current = registry.current(store)
    assert current.champion["run_id"] == "run-2" and current.generation == 2
    assert current.comparison == better.comparison  # the history keeps the difference and its interval
    assert json.loads(store.read_bytes(registry.POINTER))["champion"]["run_id"] == "run-2"
    assert [r.champion["run_id"] for r in registry.history(store)] == ["run-1", "run-2"]
    assert registry.promote(store, registry.describe(store, "run-3"), policy="never").promoted is False
    assert registry.promote(store, registry.describe(store, "run-3"), policy="always").promoted


def test_a_gain_within_the_noise_is_not_promoted_and_one_that_clears_the_margin_is(
    store: Storage, tmp_path: Path
) -> None:
    registry.promote(store, publish_run(store, tmp_path, "champ", degraded(0.3, seed=10)))
    champion = registry.current(store).champion

    lucky = publish_run(store, tmp_path, "lucky", degraded(0.3, seed=15))  # the same model, another draw of noise
    assert lucky["dev_score"] > champion["dev_score"] + 3  # higher on dev by 4 points ...
    noise = registry.promote(store, lucky)
    assert not noise.promoted and "within the noise" in noise.reason  # ... by less than the noise
    assert noise.comparison["low"] < 0 < noise.comparison["mean"] < noise.comparison["high"]

    real = publish_run(store, tmp_path, "real", degraded(0.1, seed=11))  # drops a third as many words
    strict = registry.promote(store, real, margin=40.0)
    assert not strict.promoted and "is not above the margin 40.00" in strict.reason
    clear = registry.promote(store, real, margin=2.0, references=DEV)
    assert clear.promoted and clear.comparison["low"] > 2.0
    assert registry.current(store).champion["run_id"] == "real"


def test_the_comparison_uses_the_rows_that_did_not_choose_the_challenger(store: Storage, tmp_path: Path) -> None:
    """Better only on the rows its strategy was chosen on: on the held-out rows it equals the champion."""
    base = degraded(0.4, seed=20)
    registry.promote(store, publish_run(store, tmp_path, "champ", base))
    held = [f for i, f in enumerate(DEV) if i % 2]
    tuned = {f: base[f] if f in held else DEV[f] for f in DEV}
    challenger = publish_run(store, tmp_path, "tuned", tuned, held_out=held)
    assert challenger["dev_score"] > registry.current(store).champion["dev_score"] + 10
    decision = registry.promote(store, challenger, references=DEV)
    assert not decision.promoted and f"on {len(held)} held-out dev rows" in decision.reason
    assert decision.comparison["mean"] == 0.0


def test_on_the_same_dev_data_the_rows_both_predicted_are_compared(store: Storage, tmp_path: Path) -> None:
    part = dict(list(DEV.items())[:16])  # debug runs predict a slice of dev
    registry.promote(store, publish_run(store, tmp_path, "a", {f: WRONG[f] for f in part}, references=part))
    decision = registry.promote(store, publish_run(store, tmp_path, "b", part, references=part), references=DEV)
    assert decision.promoted and "on 16 dev rows, on the same dev data" in decision.reason


def test_champion_show_prints_the_difference_with_its_interval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = open_storage(str(tmp_path / "store"))
    registry.promote(store, publish_run(store, tmp_path, "a", degraded(0.5, seed=1)))
    registry.promote(store, publish_run(store, tmp_path, "b", DEV))
    assert main(["champion", "show", "--storage", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    diff = registry.current(store).comparison
    assert diff["confidence"] == registry.PROMOTION_CONFIDENCE == 0.95
    assert (
        f"vs the champion it replaced: {diff['mean']:+.2f} (95% CI {diff['low']:+.2f} to {diff['high']:+.2f}) "
        "on 48 dev rows, paired bootstrap" in out
    )
    assert "b/ensemble: ensemble (best_single) of m1; dev score 100.00" in out


def test_concurrent_promotions_have_exactly_one_winner(
    store: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.promote(store, publish_run(store, tmp_path, "base", WRONG))
    # Equal predictions. Half the racers read the champion and then wait until all of them have read it, so they
    # really race for generation 2; the others start whenever, and a late one is refused on score instead.
    challengers = [publish_run(store, tmp_path, f"race-{i}", DEV) for i in range(6)]
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
    assert all(
        ("became generation 2 first" in d.reason and winners[0] in d.reason)
        or d.reason.endswith("it does not beat the champion")
        for d in losers
    )
    assert any("became generation 2 first" in d.reason for d in losers)
    records = registry.history(store)
    assert [r.generation for r in records] == [1, 2]
    assert records[1].champion["run_id"] == winners[0] and records[1].previous == 1
    assert registry.current(store).champion["run_id"] == winners[0]


def test_rollback_restores_the_previous_champion(store: Storage, tmp_path: Path) -> None:
    with pytest.raises(DialsumError, match="nothing to roll back"):
        registry.rollback(store)
    for run, rate in [("r1", 0.6), ("r2", 0.3), ("r3", 0.0)]:
        registry.promote(store, publish_run(store, tmp_path, run, degraded(rate, seed=5)))
    assert registry.rollback(store).champion["run_id"] == "r2"
    assert registry.current(store).champion["run_id"] == "r2"
    assert registry.rollback(store).champion["run_id"] == "r1"
    with pytest.raises(DialsumError, match="no predecessor"):
        registry.rollback(store)
    assert [(r.action, r.champion["run_id"]) for r in registry.history(store)] == [
        ("promote", "r1"),
        ("promote", "r2"),
        ("promote", "r3"),
        ("rollback", "r2"),
        ("rollback", "r1"),
    ]


def test_a_different_dev_set_rescores_the_champion_or_says_why_not(store: Storage, tmp_path: Path) -> None:
    registry.promote(store, publish_run(store, tmp_path, "old", WRONG, dev_sha="dev-a"))
    challenger = publish_run(store, tmp_path, "new", degraded(0.2, seed=6), dev_sha="dev-b")

    unknown = registry.promote(store, challenger)
    assert not unknown.promoted and "no references" in unknown.reason

    # The champion's saved predictions are junk against the new references: it re-scores far below the challenger.
    rescored = registry.promote(store, challenger, references=DEV)
    assert rescored.promoted and "re-scored on the new dev set (48 dialogues)" in rescored.reason
    assert rescored.champion_score < 10

    more_rows = {**DEV, "dev_99": "새 대화의 요약."}
    newest = publish_run(store, tmp_path, "newest", more_rows, dev_sha="dev-c", references=more_rows)
    refused = registry.promote(store, newest, references=more_rows)
    assert not refused.promoted
    assert refused.reason == (
        "cannot compare: the dev data differs from the champion's, and the champion's saved dev "
        "predictions cover 48 of the 49 dialogues of the new dev set (missing e.g. dev_99)"
    )


def test_runs_without_per_row_scores_are_compared_on_the_dev_data_or_not_at_all(store: Storage, tmp_path: Path) -> None:
    registry.promote(store, publish_run(store, tmp_path, "before", WRONG, references=None))
    challenger = publish_run(store, tmp_path, "after", DEV)
    refused = registry.promote(store, challenger)
    assert not refused.promoted and "the champion published no per-row dev scores" in refused.reason
    assert registry.promote(store, challenger, references=DEV).promoted


def test_a_pointer_left_behind_is_caught_up(store: Storage, tmp_path: Path) -> None:
    registry.promote(store, publish_run(store, tmp_path, "a", WRONG))
    stale = store.read_bytes(registry.POINTER)
    registry.promote(store, publish_run(store, tmp_path, "b", DEV))
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
    publish_run(store, tmp_path, "run-1", DEV)
    ens = tmp_path / "run-2" / "ensemble"
    write_submission(ens / "predictions" / "dev.csv", list(DEV), list(DEV.values()))
    summary = {
        "run_id": "run-2",
        "choice": "best_single",
        "dev_score": 40.0,
        "weights": {"m1": 1.0},
        "dev_scores": {"m1": 40.0},
        "dev_sha256": "dev-a",
        "sources": {"m1": "run-1"},
    }
    (ens / "ensemble.json").write_text(json.dumps(summary))
    publish(ens, "run-2", "ensemble", storage=store)
    entry = registry.describe(store, "run-2")
    assert entry["sources"] == {"m1": "run-1"} and entry["config_sha256"] == {"m1": "cfg"}
