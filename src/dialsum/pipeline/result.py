"""What a model run returns, and new run ids: torch-free, shared by the trained and the generate-only runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
