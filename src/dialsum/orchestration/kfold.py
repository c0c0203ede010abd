"""The `kfold` flow: K-fold cross-validation of one model config, one `train-model` child per fold.

The parent assigns the folds (`tuning.folds`, written to `kfold/<run>/folds.json`), publishes each fold's data
folder to `kfold/<run>/data/fold-<i>/` (so children may run anywhere that sees the storage), and runs the
children `<run>-f<i>` at most `parallel` at once, one per free GPU queue (or local process when embedded); a
crashed child is relaunched and resumes. It then reads the folds' published predictions back and writes, under
`kfold/<run>/`: `oof.csv` (the out-of-fold prediction of every train row), `kfold.json` (pooled OOF score with
its interval, per-fold scores, the fold ensemble's dev score) and `predictions/dev.csv`, `predictions/test.csv`
of the fold ensemble. Running the same run id again (in the same storage) continues: finished folds are not trained
again, and running children are adopted; a K-fold run of the same id in another storage is another run. After
Ctrl-C or SIGTERM no fold starts and running folds stop at their next step with a checkpoint.
"""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.utilities.hashing import file_hash
from pydantic import Field

from dialsum import storage
from dialsum.data import load_splits, sample_dir
from dialsum.data import source as datasource
from dialsum.errors import ConfigError, DialsumError
from dialsum.orchestration import api
from dialsum.orchestration.children import make_launcher, run_all
from dialsum.orchestration.requests import OneModelFanOut, flat_parameters
from dialsum.orchestration.train_model import (
    CRASH_RELAUNCHES,
    OrchestrationError,
    model_name,
    slug,
)
from dialsum.release import ensemble
from dialsum.release import kfold as results
from dialsum.state import stop
from dialsum.tuning import folds as folding
from dialsum.tuning.loop import Status

SPLIT_FILES = ("train.csv", "dev.csv", "test.csv")


class FoldsFailed(OrchestrationError):
    def __init__(self, failed: dict[int, str], summary: dict[str, Any]) -> None:
        super().__init__(failed, summary)
        self.failed, self.summary = failed, summary

    def __str__(self) -> str:
        details = "; ".join(f"fold {i} ({reason})" for i, reason in self.failed.items())
        return f"{len(self.failed)} of {self.summary['k']} folds failed: {details}"


def kfold_key(run_id: str, rel: str = "") -> str:
    return f"kfold/{storage.check_name(run_id, 'run id')}/{rel}"


def _write_once(store: storage.Storage, key: str, data: bytes, what: str) -> None:
    """Write `data` unless the same bytes are there; other bytes mean the run was started differently."""
    current = store.read_bytes(key)
    if current is None:
        store.write_bytes(key, data)
    elif current != data:
        raise ConfigError(f"{store.location(key)} differs: {what}; use a new run id")


def prepare(run_id: str, root: Path, k: int, seed: int, store: storage.Storage) -> folding.Folds:
    """Assign the folds, record folds.json and publish each fold's data folder (once per run id)."""
    folds = folding.assign(root / "train.csv", k, seed)
    _write_once(
        store,
        kfold_key(run_id, "folds.json"),
        folds.to_json().encode(),
        "this run id was started with other folds (seed, k or train.csv)",
    )
    for fold in range(k):
        for name, data in folding.fold_data(root, folds, fold).items():
            _write_once(store, kfold_key(run_id, f"data/fold-{fold}/{name}"), data, "the fold's data changed")
    return folds


def _publish_results(run_id: str, result: results.KFoldResult, store: storage.Storage) -> None:
    store.write_bytes(kfold_key(run_id, "oof.csv"), results.oof_csv(result))
    store.write_bytes(
        kfold_key(run_id, "kfold.json"), (json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n").encode()
    )
    if result.ensemble is not None:
        import tempfile

        from dialsum.data import write_submission

        with tempfile.TemporaryDirectory(prefix="dialsum-kfold-") as tmp:
            for split, preds in result.ensemble.predictions.items():
                path = Path(tmp) / f"{split}.csv"
                write_submission(path, list(preds), list(preds.values()))
                store.write_bytes(kfold_key(run_id, f"predictions/{split}.csv"), path.read_bytes())


def _read_folds(
    run_id: str, k: int, statuses: dict[str, Status], name: str, store: storage.Storage
) -> tuple[dict[int, Any], dict[int, str]]:
    """Each fold's published outputs, and why each fold that has none failed (`statuses`: of the children run now;
    a fold without one was published by an earlier run)."""
    outputs, failed = {}, {}
    for i in range(k):
        status = statuses.get(f"{run_id}-f{i}")
        if status is not None and status.state != "completed":
            failed[i] = status.message
            continue
        try:
            outputs[i] = ensemble.read_outputs(f"{run_id}-f{i}", name, store)
        except DialsumError as exc:
            failed[i] = f"completed, but its published result is unusable: {exc}"
    return outputs, failed


class KFoldRequest(OneModelFanOut):
    """One K-fold run: `model`'s config cross-validated over the folds of train.csv, a `train-model` child per fold."""

    k: int = Field(5, description="folds, at least 2")
    run_id: str | None = Field(None, description="the run to start or continue (default: a new id)")
    crash_relaunches: int = Field(CRASH_RELAUNCHES, description="relaunches of a child that ends Crashed")


@flow(name="kfold", version=file_hash(__file__))  # not the hash of requests.py
@flat_parameters(KFoldRequest)
def kfold(request: KFoldRequest) -> dict[str, Any]:
    """Cross-validate `model` (with `overrides`) over `k` folds of train.csv, `parallel` children at once."""
    stop.reclaim()  # embedded: SIGTERM stops the run as Ctrl-C does
    model, k, parallel = request.model, request.k, request.parallel
    if k < 2 or parallel < 1:
        raise ConfigError(f"kfold needs k >= 2 and parallel >= 1, got {k} and {parallel}")
    name = model_name(model, request.overrides)
    run_id = storage.check_name(request.run_id or _new_run_id(), "run id")
    root = datasource.resolve(request.data_dir) or sample_dir()
    store = storage.open_storage(request.storage_url)
    folds = prepare(run_id, root, k, request.seed, store)
    logger = get_run_logger()
    logger.info("kfold %s: %s, %d folds of %s rows, %d at once", run_id, name, k, folds.sizes(), parallel)
    common = {
        "model": model,
        "storage_url": request.storage_url,
        "debug": request.debug,
        "group": run_id,
        "overrides": request.overrides,
    }
    jobs = {
        f"{run_id}-f{i}": {
            **common,
            "run_id": f"{run_id}-f{i}",
            "data_dir": store.location(kfold_key(run_id, f"data/fold-{i}")),
        }
        for i in range(k)
        if storage.read_manifest(f"{run_id}-f{i}", name, store) is None
    }
    launcher = make_launcher(request, storage.storage_scope(store))
    tags = [f"kfold:{run_id}"]
    statuses = run_all(launcher, jobs, parallel, request.crash_relaunches, tags, request.poll_seconds, logger)
    if stop.requested():
        return {
            "run_id": run_id,
            "model": name,
            "status": "stopped",
            "location": store.location(kfold_key(run_id)),
            "stopped": {r: s.message for r, s in statuses.items() if s.state == "stopped"},
        }
    outputs, failed = _read_folds(run_id, k, statuses, name, store)
    dev = {ex.fname: ex.summary for ex in load_splits(root, splits=("dev",))["dev"]}
    result = results.assemble(folds.assignment, outputs, folding.references(root), dev, request.seed)
    _publish_results(run_id, result, store)
    summary = {
        "run_id": run_id,
        "model": name,
        **result.summary,
        "failed": failed,
        "location": store.location(kfold_key(run_id)),
    }
    create_table_artifact(summary["folds"], key=slug(f"kfold-{run_id}"), description=f"Folds of K-fold run {run_id}")
    if failed:
        raise FoldsFailed(failed, summary)
    return summary


def _new_run_id() -> str:
    import secrets
    from datetime import datetime

    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def run_embedded(model: str, **options: Any) -> dict[str, Any]:
    """Run `kfold` in this process (reporting to `PREFECT_API_URL` or a temporary local API, `api`); returns the
    summary also when folds failed (its `failed` says which), or was stopped by Ctrl-C or SIGTERM (its `status` is
    "stopped", its `stopped` naming each interrupted fold: the same run id continues them)."""
    with api.embedded(options) as options:
        try:
            return kfold(model, **options)
        except FoldsFailed as exc:
            return exc.summary


def format_summary(summary: dict[str, Any]) -> str:
    """The folds table and the pooled lines the CLI prints."""
    table = [["fold", "rows", "oof_rows", "oof_score", "dev_score"]]
    for row in summary["folds"]:
        cells = [row["fold"], row["rows"], row["oof_rows"], row["oof_score"], row["dev_score"]]
        table.append([f"{c:.2f}" if isinstance(c, float) else ("-" if c is None else str(c)) for c in cells])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    interval = summary.get("oof_interval")
    pooled = f"{summary['oof_score']:.2f}" if summary.get("oof_score") is not None else "-"
    ci = f" (95% CI [{interval[0]:.2f}, {interval[1]:.2f}])" if interval else ""
    lines.append(f"pooled OOF score {pooled}{ci}" + f" on {summary['oof_rows']} of {summary['train_rows']} train rows")
    if summary.get("ensemble"):
        ens = summary["ensemble"]
        held = "-" if ens["held_out_score"] is None else f"{ens['held_out_score']:.2f}"
        lines.append(
            f"fold ensemble ({ens['choice']}): held-out dev score {held} on {ens['split']['held_out']} rows "
            f"(chosen on {ens['split']['selection']} others); full dev {ens['full_dev_score']:.2f}"
        )
    for fold, reason in summary.get("failed", {}).items():
        lines.append(f"fold {fold} failed: {reason}")
    lines.append(f"kfold {summary['run_id']}: {summary['location']}")
    return "\n".join(lines)
