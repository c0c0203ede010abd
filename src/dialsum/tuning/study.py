"""The Optuna study of a sweep: a journal file on the parent's disk, snapshotted to object storage after each change.

`sweeps/<study>/` under the storage root holds `journal.log` (Optuna's append-only journal: every trial, its
parameters, intermediate values and state), `space.yaml` (the search space the study was started with) and,
once the sweep ends, its outputs. A parent restarted on another machine fetches the journal and goes on; no
database server is needed. (Optuna's RDB storage on the compose Postgres would work too, but a journal file is
enough for one parent: only the parent ever writes the study.)

Proposals are reproducible and restart-safe: the TPE sampler (`constant_liar=True`, so running trials are
taken into account) is seeded per trial number from the sweep's seed, so a restarted parent never replays the
random stream of the first one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from dialsum.errors import ConfigError, StorageError
from dialsum.storage import Storage
from dialsum.tuning.space import SearchSpace

log = logging.getLogger(__name__)

STUDY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")
JOURNAL = "journal.log"
SPACE = "space.yaml"
SETTINGS = "sweep.json"


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not STUDY_RE.fullmatch(name):
        raise ConfigError(
            f"invalid study name {name!r}: use 1-48 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def study_key(study: str, rel: str = "") -> str:
    """The key of `rel` in a study's folder, `sweeps/<study>/<rel>`."""
    return f"sweeps/{check_study_name(study)}/{rel}"


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed for trial `number` of a sweep seeded with `seed` (stable across restarts)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "big")


class StudyJournal:
    """A study's journal: local file `<folder>/journal.log`, the copy of record in `sweeps/<study>/` of `store`."""

    def __init__(self, name: str, store: Storage, folder: Path) -> None:
        self.name, self.store = check_study_name(name), store
        self.folder = Path(folder)
        self.path = self.folder / JOURNAL

    def restore(self) -> bool:
        """Bring the local journal up to the stored snapshot; True when the study already existed.

        A local journal that extends the snapshot (this machine wrote after the last upload) is kept; anything else
        is replaced by the snapshot, the copy of record."""
        self.folder.mkdir(parents=True, exist_ok=True)
        remote = self.store.read_bytes(study_key(self.name, JOURNAL))
        local = self.path.read_bytes() if self.path.is_file() else None
        if remote is None:
            if local:
                log.warning(
                    "study %s: no snapshot in %s; going on from the local journal %s",
                    self.name,
                    self.store.url,
                    self.path,
                )
            return bool(local)
        if local is None or not local.startswith(remote):
            temp = self.path.with_suffix(".tmp")
            temp.write_bytes(remote)
            temp.replace(self.path)
        return True

    def snapshot(self) -> None:
        """Upload the local journal as the copy of record."""
        self.store.write_bytes(study_key(self.name, JOURNAL), self.path.read_bytes())

    def check_space(self, space: SearchSpace | None) -> SearchSpace:
        """The space the study was started with: stored on first use; a different one later is an error."""
        stored = self.store.read_bytes(study_key(self.name, SPACE))
        if stored is None:
            if space is None:
                raise ConfigError(f"study {self.name} does not exist in {self.store.url}; give a search space")
            self.store.write_bytes(
                study_key(self.name, SPACE), yaml.safe_dump(space.to_data(), sort_keys=False).encode()
            )
            return space
        try:
            before = SearchSpace.model_validate(yaml.safe_load(stored))
        except Exception as exc:  # noqa: BLE001 - any unreadable stored space is reported the same way
            raise StorageError(
                f"{self.store.location(study_key(self.name, SPACE))}: unreadable search space: {exc}"
            ) from None
        if space is not None and space.to_data() != before.to_data():
            raise ConfigError(
                f"study {self.name} was started with another search space "
                f"({self.store.location(study_key(self.name, SPACE))}); use a new study name"
            )
        return before

    def check_settings(self, model: str, overrides: list[str]) -> list[str]:
        """The study's model and base overrides: stored on first use. Later, no overrides means the stored ones;
        another model or other overrides are an error (the trials would not be comparable). Returns the overrides."""
        import json

        key = study_key(self.name, SETTINGS)
        stored = self.store.read_bytes(key)
        if stored is None:
            self.store.write_bytes(key, json.dumps({"model": model, "overrides": list(overrides)}, indent=1).encode())
            return list(overrides)
        before = json.loads(stored)
        if before["model"] != model or (overrides and list(overrides) != before["overrides"]):
            raise ConfigError(
                f"study {self.name} was started for {before['model']} with overrides "
                f"{before['overrides'] or 'none'}; continue it with those, or use a new study name"
            )
        return list(before["overrides"])

    def open(self, space: SearchSpace, seed: int) -> Any:
        """The Optuna study on the local journal (created on first use)."""
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(str(self.path), lock_obj=JournalFileOpenLock(str(self.path))))
        return optuna.create_study(
            study_name=self.name,
            storage=storage,
            direction=space.direction,
            sampler=sampler(seed, 0),
            pruner=pruner(space),
            load_if_exists=True,
        )


def startup_trials(budget: int | None) -> int:
    """TPE's random start: about a third of the budget, at least 3 (Optuna's default of 10 would make an 8-16
    trial sweep mostly random search)."""
    return 10 if budget is None else max(3, round(budget / 3))


def sampler(seed: int, number: int, budget: int | None = None) -> Any:
    """TPE with the constant liar (running trials count as bad guesses), seeded for trial `number`; its random
    start scales with the sweep's `budget` (`startup_trials`)."""
    from optuna.samplers import TPESampler

    return TPESampler(seed=trial_seed(seed, number), constant_liar=True, n_startup_trials=startup_trials(budget))


def pruner(space: SearchSpace) -> Any:
    from optuna import pruners

    spec = space.pruner
    if spec.type == "median":
        return pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_steps)
    if spec.type == "hyperband":
        return pruners.HyperbandPruner(min_resource=max(spec.warmup_steps, 1))
    return pruners.NopPruner()
