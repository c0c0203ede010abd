"""Training checkpoints in storage: `<run-id>/<model>/checkpoints/<name>/`, each with its own manifest, written last.

A checkpoint without its manifest does not exist for `list_checkpoints`, so a crash mid-upload is harmless.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from dialsum.errors import StorageError
from dialsum.storage.base import MANIFEST, NAME_RE, Storage, check_name, digest_file
from dialsum.storage.manifest import (
    build_manifest,
    entries_of,
    fetch_files,
    local_files,
    parse_manifest,
    run_prefix,
)

CHECKPOINTS_DIR = "checkpoints"


def _checkpoint_prefix(run_id: str, model: str, name: str | None = None) -> str:
    base = run_prefix(run_id, model) + f"{CHECKPOINTS_DIR}/"
    return base + f"{check_name(name, 'checkpoint name')}/" if name is not None else base


def publish_checkpoint(local_dir: Path, run_id: str, model: str, name: str, storage: Storage) -> str:
    """Upload a checkpoint folder to `<run_id>/<model>/checkpoints/<name>/`, each file verified, manifest last.

    A checkpoint without its manifest does not exist for `list_checkpoints`, so a crash mid-upload is harmless.
    """
    prefix = _checkpoint_prefix(run_id, model, name)
    files = local_files(Path(local_dir))
    with ThreadPoolExecutor(max_workers=2) as pool:
        hashing = {pool.submit(digest_file, path): rel for rel, path in files.items()}
        for future in as_completed(hashing):
            storage.upload(prefix + hashing[future], files[hashing[future]], future.result())
    manifest = build_manifest(run_id, model, entries_of(hashing), {"checkpoint": name})
    storage.write_bytes(prefix + MANIFEST, json.dumps(manifest, indent=2).encode())
    return storage.location(prefix)


def checkpoint_manifest(run_id: str, model: str, name: str, storage: Storage) -> dict[str, Any] | None:
    key = _checkpoint_prefix(run_id, model, name) + MANIFEST
    data = storage.read_bytes(key)
    return None if data is None else parse_manifest(data, storage.location(key))


def list_checkpoints(run_id: str, model: str, storage: Storage) -> list[str]:
    """Names of the complete (manifest-bearing) checkpoints of a model run, sorted."""
    base = _checkpoint_prefix(run_id, model)
    names = set()
    for key in storage.list_keys(base):
        parts = key[len(base) :].split("/")
        if len(parts) == 2 and parts[1] == MANIFEST and NAME_RE.fullmatch(parts[0]):
            names.add(parts[0])
    return sorted(names)


def fetch_checkpoint(run_id: str, model: str, name: str, dest: Path, storage: Storage) -> Path:
    """Download a published checkpoint into `dest` (absent or empty), every file verified."""
    manifest = checkpoint_manifest(run_id, model, name, storage)
    if manifest is None:
        raise StorageError(f"checkpoint {name} of {run_id}/{model} is not published in {storage.url}")
    return fetch_files(
        manifest, _checkpoint_prefix(run_id, model, name), f"{run_id}/{model}/{name}", Path(dest), storage
    )


def delete_checkpoint(run_id: str, model: str, name: str, storage: Storage) -> None:
    """Withdraw a checkpoint: its manifest first, then the files it listed."""
    prefix = _checkpoint_prefix(run_id, model, name)
    manifest = checkpoint_manifest(run_id, model, name, storage)
    storage.delete(prefix + MANIFEST)
    for entry in (manifest or {}).get("files", []):
        storage.delete(prefix + entry["path"])
