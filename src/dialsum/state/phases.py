"""The phases of one model run that are done, recorded in its state folder (`runs.state_dir`) so a retry skips
them: `run.json` holds the fingerprint of the config and data the run started with, then each finished phase
leaves `<phase>.json` (written atomically) with what later phases need.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from dialsum.errors import DialsumError
from dialsum.storage.local import write_json

T = TypeVar("T")


class Ranks(Protocol):
    """The processes of one data-parallel run (`engine.distributed` is one): rank 0 writes for all."""

    def on_main(self, fn: Callable[[], T]) -> T: ...

    def is_main(self) -> bool: ...


class _OneProcess:
    @staticmethod
    def on_main(fn: Callable[[], T]) -> T:
        return fn()

    @staticmethod
    def is_main() -> bool:
        return True


ONE_PROCESS: Ranks = _OneProcess()


class Phases:
    """A run's finished phases. A folder started with a different config or data is refused: its checkpoints and
    saved model belong to that run. With `ranks` (data parallelism) only rank 0 writes: it opens the folder while
    the other ranks wait, then they read it."""

    def __init__(self, folder: Path, fingerprint: str, ranks: Ranks = ONE_PROCESS) -> None:
        self.folder, self.fingerprint, self.ranks = Path(folder), fingerprint, ranks
        self.started = ranks.on_main(self._open)

    def _open(self) -> bool:
        """Check the folder's fingerprint, or start the folder; True when an earlier attempt had started it."""
        run = self.folder / "run.json"
        if run.is_file():
            if json.loads(run.read_text()).get("fingerprint") != self.fingerprint:
                raise DialsumError(
                    f"{self.folder} belongs to a run started with a different config or data; use a new run id"
                )
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write("run", {"fingerprint": self.fingerprint})
        return False

    def get(self, phase: str) -> dict | None:
        path = self.folder / f"{phase}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def done(self, phase: str) -> bool:
        return (self.folder / f"{phase}.json").is_file()

    def mark(self, phase: str, data: dict) -> None:
        """Record a finished phase (rank 0; the other ranks' call does nothing)."""
        if self.ranks.is_main():
            self._write(phase, data)

    def _write(self, phase: str, data: dict) -> None:
        write_json(self.folder / f"{phase}.json", data)

    def clear(self) -> None:
        """Forget the run's local state (its checkpoints included) once its result is safely stored."""
        if self.ranks.is_main():
            shutil.rmtree(self.folder, ignore_errors=True)
