"""Artifact storage: publish run folders to a local folder or S3 and fetch them back, verified.

`open_storage(url)` picks the backend by URL (`s3://bucket/prefix`, `file:///path` or a plain folder; default the
`DIALSUM_STORAGE_URL` setting): `local.py` or `s3.py` (the only module that talks to boto3, imported only for
S3 URLs). `manifest.py` publishes and fetches run folders, manifest last; `checkpoints.py` does the same for
training checkpoints; `progress.py` holds a run's live curve and stop marker; `scope.py` says which storage this
is (names are unique only inside one). May import only the foundations (config, settings, errors).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from dialsum.errors import StorageError
from dialsum.settings import get_settings
from dialsum.storage.base import MANIFEST, Storage, check_name, sha256_file
from dialsum.storage.checkpoints import (
    CHECKPOINTS_DIR,
    delete_checkpoint,
    fetch_checkpoint,
    list_checkpoints,
    publish_checkpoint,
)
from dialsum.storage.lease import Lease, LeaseHeld, hold
from dialsum.storage.local import LocalStorage
from dialsum.storage.manifest import (
    PublishResult,
    RunEntry,
    fetch,
    list_runs,
    new_run_id,
    publish,
    read_manifest,
    read_published,
    run_key,
)
from dialsum.storage.progress import (
    read_progress,
    request_stop,
    stop_request,
    write_progress,
)
from dialsum.storage.scope import storage_scope

__all__ = [
    "CHECKPOINTS_DIR",
    "MANIFEST",
    "Lease",
    "LeaseHeld",
    "LocalStorage",
    "PublishResult",
    "RunEntry",
    "Storage",
    "check_name",
    "delete_checkpoint",
    "fetch",
    "fetch_checkpoint",
    "hold",
    "list_checkpoints",
    "list_runs",
    "new_run_id",
    "open_storage",
    "probe",
    "publish",
    "publish_checkpoint",
    "read_manifest",
    "read_progress",
    "read_published",
    "request_stop",
    "run_key",
    "sha256_file",
    "stop_request",
    "storage_scope",
    "write_progress",
]


def open_storage(url: str | None = None) -> Storage:
    """Open the storage at `url` (default: the `storage_url` setting)."""
    settings = get_settings()
    url = url or settings.storage_url
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from dialsum.storage.s3 import S3Storage

        return S3Storage(url, settings)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.netloc + parsed.path)))
    if parsed.scheme:
        raise StorageError(f"unsupported storage URL {url!r}: use s3://bucket/prefix, file:///path or a folder path")
    return LocalStorage(Path(url))


def probe(store: Storage) -> None:
    """Write and delete a small object at the storage root: a `StorageError` now, naming the storage, rather
    than after training (a missing bucket, no credentials, a read-only folder)."""
    key = f".dialsum-probe-{new_run_id()}"
    try:
        store.write_bytes(key, b"probe")
        store.delete(key)
    except StorageError as exc:
        raise StorageError(f"storage {store.url} is not writable: {exc}") from None
