"""A publishing run's live side-channel: the evaluation curve in storage while it trains, and a STOP marker that
makes it stop at the next evaluation, then save, publish and complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dialsum import storage
from dialsum.pipeline import run_model
from dialsum.storage import LocalStorage

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # both train a tiny model end to end


def profile(folder: Path) -> Path:
    base = (ROOT / "configs" / "models" / "tiny-bart.yaml").read_text(encoding="utf-8").split("\ntraining:")[0]
    path = folder / "live-bart.yaml"
    path.write_text(
        base + "\ntraining: {epochs: 1, batch_size: 4, length_group_batches: 2, debug_rows: 16, "
        "debug_steps: 4, eval_every: 1, eval_score_rows: 4, checkpoint_every: null}\n"
        "generation: {batch_size: 16, max_new_tokens: 24, num_beams: 1}\n",
        encoding="utf-8",
    )
    return path


def test_a_stop_request_ends_training_at_the_next_evaluation_and_the_run_completes(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    storage.request_stop("live-1", "live-bart", store, "pruned by the sweep at step 0")

    result = run_model(str(profile(tmp_path)), run_id="live-1", debug=True, storage_url=str(tmp_path / "store"))

    assert result.metrics["train_steps"] == 1, "stopped at the first evaluation instead of running 4 steps"
    assert result.metrics["training"]["stop_requested"] is True
    assert storage.read_manifest("live-1", "live-bart", store) is not None
    published = json.loads(storage.read_published("live-1", "live-bart", "metrics.json", store))
    assert published["training"]["stop_requested"] is True and published["dev"]["score"] >= 0
    curve = storage.read_progress("live-1", "live-bart", store)
    assert [r["step"] for r in curve] == [1] and curve[0]["dev_loss"] > 0
    assert "progress.json" not in {e["path"] for e in storage.read_manifest("live-1", "live-bart", store)["files"]}


def test_without_a_marker_the_curve_grows_with_every_evaluation(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    result = run_model(str(profile(tmp_path)), run_id="live-2", debug=True, storage_url=str(tmp_path / "store"))
    assert result.metrics["train_steps"] == 4 and result.metrics["training"]["stop_requested"] is False
    curve = storage.read_progress("live-2", "live-bart", store)
    assert [r["step"] for r in curve] == [1, 2, 3, 4] and "dev_score" in curve[-1]
    assert curve == result.metrics["training"]["curve"]
