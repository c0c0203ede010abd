"""Published run folders: `<run-id>/<model>/` holds every file of a run folder plus `manifest.json`, written last.

The manifest lists each file's path, sha256 and size, with the package versions and git commit; a model's
artifacts exist only once its manifest does, and every reader ignores folders without one. `publish` uploads
and verifies, `fetch` downloads and verifies through a renamed temp folder, `list_runs` lists what is complete.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dialsum.errors import StorageError
from dialsum.settings import get_settings
from dialsum.storage.base import (
    MANIFEST,
    NAME_RE,
    FileDigest,
    Storage,
    check_name,
    check_relpath,
    digest_file,
    sha256_file,
)

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
TRACKED_PACKAGES = ("dialsum", "torch", "transformers", "peft", "bitsandbytes")


@dataclass(frozen=True)
class PublishResult:
    """Outcome of `publish`: where the run lives, its manifest, files uploaded, and whether it was a no-op."""

    url: str
    manifest: dict[str, Any]
    uploaded: int
    skipped: bool


@dataclass(frozen=True)
class RunEntry:
    """One complete published model run."""

    run_id: str
    model: str
    manifest: dict[str, Any]


def new_run_id() -> str:
    """A time-based run id, e.g. 20250101-030000-ab12cd (UTC, then 6 random hex digits)."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def run_key(run_id: str, model: str, rel: str = "") -> str:
    """The key of `rel` in a model run's folder, `<run-id>/<model>/<rel>`, directly under the storage root."""
    return f"{check_name(run_id, 'run id')}/{check_name(model, 'model name')}/{rel}"


def run_prefix(run_id: str, model: str) -> str:
    return run_key(run_id, model)


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git_commit() -> str | None:
    if commit := get_settings().git_commit:
        return commit
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """Decode a manifest and check the parts readers rely on."""
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        for entry in files:
            check_relpath(entry["path"])
            if not isinstance(entry["sha256"], str) or not isinstance(entry["size"], int):
                raise TypeError("sha256 must be a string and size an integer")
    except (ValueError, KeyError, TypeError, StorageError) as exc:
        raise StorageError(f"malformed manifest {where}: {exc}") from exc
    return manifest


def local_files(local_dir: Path) -> dict[str, Path]:
    """Regular files of a run folder by relative path; a top-level manifest.json is left out."""
    if not local_dir.is_dir():
        raise StorageError(f"run folder {local_dir} does not exist or is not a folder")
    found = {}
    for folder, dirs, files in os.walk(local_dir):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise StorageError(f"{path}: run folders may hold only regular files and folders (no symlinks)")
        for name in files:
            path = Path(folder) / name
            found[check_relpath(path.relative_to(local_dir).as_posix())] = path
    found.pop(MANIFEST, None)
    return dict(sorted(found.items()))


def entries_of(hashing: dict[Future[FileDigest], str]) -> list[dict[str, Any]]:
    """Manifest file entries, in path order, once every file is hashed."""
    digests = {rel: future.result() for future, rel in hashing.items()}
    return [{"path": rel, "sha256": d.sha256, "size": d.size} for rel, d in sorted(digests.items())]


def _json_copy(extra: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON round-tripped copy of caller metadata; `StorageError` if it is not serialisable."""
    try:
        return json.loads(json.dumps(extra or {}))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"extra metadata must be JSON-serialisable: {exc}") from exc


def build_manifest(run_id: str, model: str, entries: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "run_id": run_id,
        "model": model,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": entries,
        "extra": extra,
        "versions": _package_versions(),
        "git_commit": _git_commit(),
    }


def read_manifest(run_id: str, model: str, storage: Storage | None = None) -> dict[str, Any] | None:
    """The manifest of a published model run, or None if it is not (completely) published."""
    storage = storage or _default()
    key = run_prefix(run_id, model) + MANIFEST
    data = storage.read_bytes(key)
    return None if data is None else parse_manifest(data, storage.location(key))


def read_published(run_id: str, model: str, rel: str, storage: Storage | None = None) -> bytes:
    """One file of a published model run, checked against its manifest (size and sha256)."""
    import hashlib

    storage = storage or _default()
    manifest = read_manifest(run_id, model, storage)
    if manifest is None:
        raise StorageError(f"{run_id}/{model} is not published in {storage.url}")
    entry = next((e for e in manifest["files"] if e["path"] == rel), None)
    data = storage.read_bytes(run_prefix(run_id, model) + rel) if entry is not None else None
    if entry is None or data is None:
        raise StorageError(f"{run_id}/{model} has no {rel}")
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise StorageError(f"checksum mismatch for {rel} of {run_id}/{model}: the stored file was changed")
    return data


def publish(
    local_dir: Path,
    run_id: str,
    model: str,
    *,
    storage: Storage | None = None,
    extra: dict[str, Any] | None = None,
    force: bool = False,
) -> PublishResult:
    """Upload a run folder to `<run_id>/<model>/`, each file verified, then write its manifest.

    Files are hashed in the background and each is uploaded as soon as its hash is known.
    Publishing the same files again is a no-op; different files under an existing manifest are refused
    unless `force`, which first withdraws the old manifest and finally removes files it no longer lists.
    """
    storage = storage or _default()
    prefix = run_prefix(run_id, model)
    files = local_files(Path(local_dir))
    extra = _json_copy(extra)
    with ThreadPoolExecutor(max_workers=2) as pool:
        hashing = {pool.submit(digest_file, path): rel for rel, path in files.items()}
        old = read_manifest(run_id, model, storage)
        if old is not None:
            if old["files"] == entries_of(hashing):
                log.info("%s/%s already published with identical files; nothing to do", run_id, model)
                return PublishResult(storage.location(prefix), old, uploaded=0, skipped=True)
            if not force:
                raise StorageError(
                    f"{run_id}/{model} is already published in {storage.url} with different files; "
                    "use force to replace it"
                )
            storage.delete(prefix + MANIFEST)
        for future in as_completed(hashing):
            storage.upload(prefix + hashing[future], files[hashing[future]], future.result())
    entries = entries_of(hashing)
    manifest = build_manifest(run_id, model, entries, extra)
    storage.write_bytes(prefix + MANIFEST, json.dumps(manifest, indent=2).encode())
    for stale in {e["path"] for e in (old or {}).get("files", [])} - {e["path"] for e in entries}:
        storage.delete(prefix + stale)
    log.info("published %s/%s: %d files to %s", run_id, model, len(entries), storage.location(prefix))
    return PublishResult(storage.location(prefix), manifest, uploaded=len(entries), skipped=False)


def list_runs(storage: Storage | None = None) -> list[RunEntry]:
    """All completely published model runs (those with a manifest), sorted by run id and model."""
    storage = storage or _default()
    runs = []
    for key in storage.list_keys(""):
        parts = key.split("/")
        if len(parts) != 3 or parts[2] != MANIFEST or not all(NAME_RE.fullmatch(p) for p in parts[:2]):
            continue
        manifest = read_manifest(parts[0], parts[1], storage)
        if manifest is not None:
            runs.append(RunEntry(parts[0], parts[1], manifest))
    return sorted(runs, key=lambda run: (run.run_id, run.model))


def fetch(run_id: str, model: str, dest: Path, storage: Storage | None = None) -> Path:
    """Download a published model run into `dest` (absent or empty), verifying every file and size.

    Files land in a temp folder beside `dest` that is renamed into place only after all of them
    verified, so a failure leaves nothing behind. `dest` also receives the run's manifest.json.
    """
    storage = storage or _default()
    manifest = read_manifest(run_id, model, storage)
    if manifest is None:
        raise StorageError(f"{run_id}/{model} is not published in {storage.url}")
    return fetch_files(manifest, run_prefix(run_id, model), f"{run_id}/{model}", Path(dest), storage)


def fetch_files(manifest: dict[str, Any], prefix: str, what: str, dest: Path, storage: Storage) -> Path:
    """Download the files a manifest lists from `prefix` into `dest`, verified, through a renamed temp folder."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StorageError(f"destination {dest} already exists and is not an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        for entry in manifest["files"]:
            target = staging / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.download(prefix + entry["path"], target)
            if target.stat().st_size != entry["size"] or sha256_file(target) != entry["sha256"]:
                raise StorageError(f"checksum mismatch for {entry['path']} of {what}: the stored file was changed")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("fetched %s: %d files into %s", what, len(manifest["files"]), dest)
    return dest


def _default() -> Storage:
    from dialsum.storage import open_storage

    return open_storage()
