"""A model run across attempts: whether its run id is already published (complete), whether anything is left
to resume, what a failed attempt that finished nothing leaves behind (nothing), and where a stopped one stopped.

Torch-free, so the CLI's checks before any work use the same rules as the pipeline.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from dialsum.errors import ConfigError, DialsumError
from dialsum.settings import get_settings

_CHECKPOINT_RE = re.compile(r"step-\d{8}")
WHAT = {"config_sha256": "config (profile and overrides)", "data_sha256": "data", "debug": "debug mode"}


def state_dir(run_id: str, name: str) -> Path:
    """The hidden folder of a model run's finished phases and checkpoints: outputs/<run-id>/.<model>.state."""
    return get_settings().output_dir / run_id / f".{name}.state"


def checkpoints_in(folder: Path) -> list[str]:
    """Names of the complete checkpoints in a local checkpoint folder, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if _CHECKPOINT_RE.fullmatch(p.name) and (p / "meta.json").is_file())


def published(run_id: str, cfg, data_dir: Path | None, debug: bool, store, force: bool = False) -> dict | None:
    """The published metrics when `run_id` already holds this model with the same config, data and debug mode;
    None when it holds nothing (or, with `force`, something else). Something else is refused otherwise."""
    from dialsum import storage
    from dialsum.data.source import run_identity

    manifest = storage.read_manifest(run_id, cfg.name, store)
    if manifest is None:
        return None
    extra = manifest.get("extra", {})
    differ = [WHAT[key] for key, value in run_identity(cfg, data_dir, debug).items() if extra.get(key) != value]
    if differ:
        if force:
            return None
        raise ConfigError(
            f"run {run_id}/{cfg.name} is already published in {store.url} with another "
            f"{' and '.join(differ)}; continue it with --resume {run_id} alone (its own models, "
            "overrides and data), use a new run id, or force to replace it"
        )
    return json.loads(store.read_bytes(storage.run_key(run_id, cfg.name, "metrics.json")) or b"{}")


def has_progress(run_id: str, name: str, store) -> bool:
    """Local state, a published checkpoint or a published result: something a resume continues or finds."""
    from dialsum import storage

    if (state_dir(run_id, name) / "run.json").is_file():
        return True
    return bool(storage.read_manifest(run_id, name, store) or storage.list_checkpoints(run_id, name, store))


def require_resumable(run_id: str, names: list[str], store) -> None:
    """Refuse to resume a run that left nothing behind for any of `names`, locally or in storage."""
    if any(has_progress(run_id, name, store) for name in names):
        return
    what = f"{run_id}/{names[0]}" if len(names) == 1 else f"{run_id} (models {', '.join(names)})"
    raise DialsumError(
        f"nothing to resume for run {what}: no local state in {get_settings().output_dir}, and no "
        f"checkpoint or published result in {store.url}"
    )


def discard_if_unstarted(run_id: str, name: str) -> bool:
    """Remove a failed run's local state when nothing in it had finished (no phase, no checkpoint), and its run
    folder when that leaves it empty; True when removed."""
    folder = state_dir(run_id, name)
    if not folder.is_dir() or checkpoints_in(folder / "checkpoints"):
        return False
    if any(p.name not in ("run.json", "checkpoints") for p in folder.iterdir()):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(folder.parent / f".{name}.partial", ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass
    return True


def stopped_where(run_id: str, name: str) -> str:
    """One line for a run that Ctrl-C stopped outside the training loop: what it had finished."""
    folder = state_dir(run_id, name)
    if (folder / "save.json").is_file():
        return f"{name}: stopped before publishing; its run folder is complete"
    if (folder / "fit.json").is_file():
        return f"{name}: stopped after training (its model is saved)"
    newest = checkpoints_in(folder / "checkpoints")
    return (
        f"{name}: stopped during training; newest checkpoint {newest[-1]}"
        if newest
        else f"{name}: stopped before its first checkpoint"
    )


COMMAND_RECORD = "command.json"


def write_command(run_id: str, record: dict, store) -> None:
    """What the command that started `run_id` was given (models, mode, overrides, data, debug, eval-before), at
    `<run-id>/command.json` of the storage, so `--resume RUN_ID` alone can continue it."""
    from dialsum import storage

    store.write_bytes(
        f"{storage.check_name(run_id, 'run id')}/{COMMAND_RECORD}",
        json.dumps(record, indent=2, ensure_ascii=False).encode(),
    )


def read_command(run_id: str, store) -> dict | None:
    """The record `write_command` left for `run_id`, or None (a run started before records existed, or by a flow)."""
    from dialsum import storage

    data = store.read_bytes(f"{storage.check_name(run_id, 'run id')}/{COMMAND_RECORD}")
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None
