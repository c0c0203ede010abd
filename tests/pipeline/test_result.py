"""The run records: a model's row and the train-all summary, built by their real writers, serialize with the keys
the table artifact, the flow's return value and the report have always carried, and read back equal."""

from __future__ import annotations

import json
from pathlib import Path

from dialsum.data import write_submission
from dialsum.orchestration.train_all import stopped_summary
from dialsum.orchestration.train_model import published_row, stopped_row
from dialsum.pipeline.result import ModelRow, TrainAllSummary
from dialsum.storage import LocalStorage, publish

METRICS = {"model": "m1", "type": "encoder_decoder", "dev": {"score": 41.5}, "dev_rows": 3, "dev_score_before": 2.0}
ROW_KEYS = ["model", "type", "status", "dev_score_before", "dev_score", "dev_rows", "seconds", "location", "error"]


def published_store(tmp_path: Path) -> LocalStorage:
    """A store holding run r1's model m1 as a run publishes it (metrics.json and dev predictions)."""
    folder = tmp_path / "out" / "m1"
    write_submission(folder / "predictions" / "dev.csv", ["a", "b", "c"], ["요약 하나", "요약 둘", "요약 셋"])
    (folder / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    store = LocalStorage(tmp_path / "store")
    publish(folder, "r1", "m1", storage=store)
    return store


def test_a_published_row_serializes_as_the_table_always_had_it_and_reads_back(tmp_path: Path) -> None:
    store = published_store(tmp_path)
    row = published_row("r1", "m1", store, 12.34)
    serialized = row.to_dict()
    assert list(serialized) == ROW_KEYS
    assert serialized == {
        "model": "m1",
        "type": "encoder_decoder",
        "status": "completed",
        "dev_score_before": 2.0,
        "dev_score": 41.5,
        "dev_rows": 3,
        "seconds": 12.3,
        "location": store.location("r1/m1"),
        "error": None,
    }
    assert ModelRow.from_dict(json.loads(json.dumps(serialized))) == row


def test_failed_stopped_and_unchanged_rows_keep_their_own_keys() -> None:
    failed = ModelRow.failed("m2", "Failed: broke", 1.0).to_dict()
    assert list(failed) == [k for k in ROW_KEYS if k != "dev_rows"] and failed["error"] == "Failed: broke"
    stopped = stopped_row("m3", "m3: stopped after step 7", 3.21).to_dict()
    assert stopped == {
        "model": "m3",
        "type": None,
        "status": "stopped",
        "dev_score_before": None,
        "dev_score": None,
        "seconds": 3.2,
        "location": None,
        "error": "stopped after step 7",
    }
    unchanged = ModelRow("m4", "unchanged", dev_score=1.0, seconds=0.0, source_run="older").to_dict()
    assert list(unchanged) == [*ROW_KEYS, "source_run"] and unchanged["source_run"] == "older"
    assert ModelRow.from_dict(unchanged).source_run == "older"


def test_a_stopped_summary_serializes_with_resumable_and_reads_back(tmp_path: Path) -> None:
    rows = [ModelRow.stopped("m1", "not started"), ModelRow.failed("m2", "broke")]
    state = stopped_summary("r9", rows, LocalStorage(tmp_path / "store"))
    serialized = state.result(raise_on_failure=False)
    assert serialized == {
        "run_id": "r9",
        "status": "stopped",
        "rows": [r.to_dict() for r in rows],
        "ensemble": None,
        "promotion": None,
        "plot": None,
        "resumable": False,
    }
    summary = TrainAllSummary.from_dict(json.loads(json.dumps(serialized)))
    assert summary == TrainAllSummary("r9", "stopped", rows, resumable=False) and summary.failed == {"m2": "broke"}


def test_a_trained_summary_carries_the_ensemble_plot_and_no_resumable() -> None:
    ensemble = {"choice": "best_single", "dev_score": 41.5, "plot": "file:///r1/ensemble/report.png"}
    summary = TrainAllSummary(
        "r1",
        "trained",
        [ModelRow("m1", "completed", dev_score=41.5)],
        ensemble,
        {"promoted": False, "reason": "promotion policy is `never`"},
    )
    serialized = summary.to_dict()
    assert list(serialized) == ["run_id", "status", "rows", "ensemble", "promotion", "plot"]
    assert serialized["plot"] == ensemble["plot"] and TrainAllSummary.from_dict(serialized) == summary
