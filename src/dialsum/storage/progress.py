"""A run's live side-channel in storage, beside its published folder: the evaluation curve while it trains, and a
stop request.

* `<run-id>/<model>/progress.json`: the evaluation curve so far (one record per evaluation: step, epoch,
  train_loss, dev_loss and, at epoch ends, dev_score), rewritten after each evaluation by the training run.
* `<run-id>/<model>/STOP`: a stop request (who asked, why). A run that sees it at an evaluation stops training
  there, then saves, publishes and ends as usual, with the best weights so far.

Both are small JSON objects written atomically; neither belongs to the run's manifest, so readers of published
runs never see them. A sweep's parent reads the curve to prune a trial and writes the marker to stop it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from dialsum.errors import StorageError
from dialsum.storage.base import Storage
from dialsum.storage.manifest import run_key

PROGRESS = "progress.json"
STOP = "STOP"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _read_json(store: Storage, key: str) -> dict[str, Any] | None:
    data = store.read_bytes(key)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise StorageError(f"malformed {store.location(key)}: {exc}") from exc
    if not isinstance(value, dict):
        raise StorageError(f"malformed {store.location(key)}: expected a JSON object")
    return value


def write_progress(run_id: str, model: str, curve: list[dict[str, Any]], store: Storage) -> None:
    """Publish the evaluation curve so far (replacing the previous one)."""
    record = {"run_id": run_id, "model": model, "updated_at": _now(), "curve": curve}
    store.write_bytes(run_key(run_id, model, PROGRESS), json.dumps(record, ensure_ascii=False).encode())


def read_progress(run_id: str, model: str, store: Storage) -> list[dict[str, Any]]:
    """The evaluation curve a run has published so far (empty before its first evaluation)."""
    record = _read_json(store, run_key(run_id, model, PROGRESS))
    return list((record or {}).get("curve") or [])


def request_stop(run_id: str, model: str, store: Storage, reason: str) -> None:
    """Ask a training run to stop at its next evaluation (it then saves, publishes and completes)."""
    record = {"reason": reason, "requested_at": _now()}
    store.write_bytes(run_key(run_id, model, STOP), json.dumps(record, ensure_ascii=False).encode())


def stop_request(run_id: str, model: str, store: Storage) -> dict[str, Any] | None:
    """The pending stop request of a run ({"reason", "requested_at"}), or None."""
    return _read_json(store, run_key(run_id, model, STOP))


def clear_live(run_id: str, model: str, store: Storage) -> None:
    """Remove a run's progress and stop marker (a run id that is used again starts clean)."""
    store.delete(run_key(run_id, model, PROGRESS))
    store.delete(run_key(run_id, model, STOP))
