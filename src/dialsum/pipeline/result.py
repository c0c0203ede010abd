"""What a model run returns, the row that reports it, the train-all summary of many, and new run ids: torch-free,
shared by the trained and the generate-only runs, the flows and the CLI.

`ModelRow` and `TrainAllSummary` are the only places these results are spelled out. Their `to_dict()` is what
leaves the process (the train-all table artifact, the flow's return value, the report, W&B); `from_dict` reads it
back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SUCCEEDED = ("completed", "already complete", "unchanged")  # a row whose model has a published result
FAILED, STOPPED, UNCHANGED = "failed", "stopped", "unchanged"


def new_run_id() -> str:
    from dialsum import storage

    return storage.new_run_id()


@dataclass
class RunResult:
    model: str
    type: str
    run_id: str
    run_dir: Path
    metrics: dict
    location: str | None = None
    status: str = "completed"


@dataclass(frozen=True)
class ModelRow:
    """One model's outcome in a run's table. `status`: completed, already complete (published earlier, under
    `--resume`), unchanged (reused from `source_run`), failed or stopped (`error` says why or where)."""

    model: str
    status: str
    type: str | None = None
    dev_score_before: float | None = None
    dev_score: float | None = None
    dev_rows: int | None = None
    seconds: float | None = None
    location: str | None = None
    error: str | None = None
    source_run: str | None = None

    @classmethod
    def published(
        cls,
        model: str,
        metrics: Mapping[str, Any],
        location: str | None,
        seconds: float | None = None,
        status: str = "completed",
    ) -> ModelRow:
        """The row of a run that published `metrics` (its metrics.json) at `location`."""
        return cls(
            model,
            status,
            metrics.get("type"),
            metrics.get("dev_score_before"),
            metrics["dev"]["score"],
            metrics.get("dev_rows"),
            seconds,
            location,
        )

    @classmethod
    def failed(cls, model: str, reason: str, seconds: float | None = None) -> ModelRow:
        return cls(model, FAILED, seconds=seconds, error=reason)

    @classmethod
    def stopped(cls, model: str, where: str, seconds: float | None = None) -> ModelRow:
        return cls(model, STOPPED, seconds=seconds, error=where)

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        """The serialized row: a failed or stopped row has no `dev_rows`; only an unchanged row has `source_run`."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row = {key: row[key] for key in _ROW_KEYS}
        if self.status in (FAILED, STOPPED):
            del row["dev_rows"]
        if self.status == UNCHANGED:
            row["source_run"] = self.source_run
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> ModelRow:
        return cls(**{f.name: row.get(f.name) for f in fields(cls)})


_ROW_KEYS = ("model", "type", "status", "dev_score_before", "dev_score", "dev_rows", "seconds", "location", "error")


@dataclass(frozen=True)
class TrainAllSummary:
    """What a train-all run produced. `status`: trained, unchanged (nothing retrained), already complete (a resumed
    run found everything published) or stopped (`resumable`: whether anything was kept that `--resume` continues).
    `ensemble` is the ensemble task's summary, `promotion` the promotion decision (`registry.Decision.as_dict`)."""

    run_id: str
    status: str
    rows: tuple[ModelRow, ...] = field(default_factory=tuple)
    ensemble: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    resumable: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))

    @property
    def plot(self) -> str | None:
        """The report plot's URL: the ensemble's."""
        return self.ensemble.get("plot") if self.ensemble else None

    @property
    def failed(self) -> dict[str, str | None]:
        """model -> why, for the models that failed."""
        return {row.model: row.error for row in self.rows if row.status == FAILED}

    def to_dict(self) -> dict[str, Any]:
        summary = {
            "run_id": self.run_id,
            "status": self.status,
            "rows": [row.to_dict() for row in self.rows],
            "ensemble": self.ensemble,
            "promotion": self.promotion,
            "plot": self.plot,
        }
        if self.status == STOPPED:
            summary["resumable"] = self.resumable
        return summary

    @classmethod
    def from_dict(cls, summary: Mapping[str, Any]) -> TrainAllSummary:
        return cls(
            summary["run_id"],
            summary["status"],
            rows_of(summary.get("rows") or ()),
            summary.get("ensemble"),
            summary.get("promotion"),
            summary.get("resumable"),
        )


def rows_of(rows: Iterable[Mapping[str, Any] | ModelRow]) -> tuple[ModelRow, ...]:
    """Rows as records, whether serialized or not."""
    return tuple(row if isinstance(row, ModelRow) else ModelRow.from_dict(row) for row in rows)
