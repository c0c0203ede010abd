"""Artifact storage: publish run folders to a local folder or S3 and fetch them back, verified.

Layout under the storage root (the URL's path, used as given): `<run-id>/<model>/` holds every file of a run folder plus
`manifest.json`, which is written last. The manifest lists each file's path, sha256 and size; a
model's artifacts exist only once its manifest does, and every reader ignores folders without one.

The storage is chosen by URL: `s3://bucket/prefix`, `file:///path`, or a plain path (the
`DIALSUM_STORAGE_URL` setting by default).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.utils import ChunksizeAdjuster

from dialsum.config import NAME_PATTERN
from dialsum.errors import StorageError
from dialsum.settings import Settings, get_settings

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
CHECKPOINTS_DIR = "checkpoints"
TRACKED_PACKAGES = ("dialsum", "torch", "transformers", "peft", "bitsandbytes")

_NAME_RE = re.compile(NAME_PATTERN)
_PATH_PART_RE = re.compile(r"[A-Za-z0-9._+=@-]{1,255}")
_PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict")
_READ_CHUNK = 1024 * 1024
_PART_SIZE = 16 * 1024 * 1024
_TRANSFER = TransferConfig(multipart_threshold=_PART_SIZE, multipart_chunksize=_PART_SIZE, max_concurrency=4)
_S3_CONFIG = Config(
    s3={"addressing_style": "path"},
    retries={"max_attempts": 3, "mode": "standard"},
    connect_timeout=5,
    read_timeout=30,
)


# ---------------------------------------------------------------- names and hashes


def check_name(value: str, what: str) -> str:
    """Return `value` if it is a valid run id or model name, else raise `StorageError`."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise StorageError(
            f"invalid {what} {value!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def check_relpath(value: str) -> str:
    """Return `value` if it is a safe relative POSIX path inside a run folder, else raise `StorageError`."""
    parts = value.split("/") if isinstance(value, str) else [""]
    if not all(_PATH_PART_RE.fullmatch(part) and part not in (".", "..") for part in parts):
        raise StorageError(
            f"invalid file path {value!r} in run folder: use relative '/'-separated names of letters, digits and ._+=@-"
        )
    return value


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashed(src: Path, dst: Path) -> str:
    """Copy `src` to `dst` and return the hex sha256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while chunk := reader.read(_READ_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileDigest:
    """What a stored copy of a file must match: sha256 (hex), size, and the CRC32 that S3 reports (base64)."""

    sha256: str
    size: int
    s3_crc32: str


def digest_file(path: Path) -> FileDigest:
    """Read a file once for its sha256, size and S3 CRC32.

    The S3 CRC32 is what S3 reports after an upload with `_TRANSFER`: the CRC32 of the whole object,
    or for a multipart upload the CRC32 of the concatenated big-endian CRC32s of its parts. The file
    is read in part-sized chunks, so a file below the multipart threshold is a single chunk.
    """
    stat_size = path.stat().st_size
    part_size = ChunksizeAdjuster().adjust_chunksize(_TRANSFER.multipart_chunksize, stat_size)
    sha, size, part_crcs = hashlib.sha256(), 0, []
    with open(path, "rb") as handle:
        while chunk := handle.read(part_size):
            sha.update(chunk)
            size += len(chunk)
            part_crcs.append(zlib.crc32(chunk).to_bytes(4, "big"))
    if size >= _TRANSFER.multipart_threshold:
        crc = zlib.crc32(b"".join(part_crcs)).to_bytes(4, "big")
    else:
        crc = part_crcs[0] if part_crcs else zlib.crc32(b"").to_bytes(4, "big")
    return FileDigest(sha.hexdigest(), size, base64.b64encode(crc).decode())


# ---------------------------------------------------------------- backends


class Storage(ABC):
    """Object store addressed by '/'-separated keys relative to the storage root."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The storage root as a URL or path, without credentials."""

    @abstractmethod
    def location(self, key: str) -> str:
        """Human-readable address of `key`."""

    @abstractmethod
    def upload(self, key: str, path: Path, digest: FileDigest) -> None:
        """Store the file at `path` under `key` and check the stored copy against `digest`; `StorageError` if not."""

    @abstractmethod
    def download(self, key: str, path: Path) -> None:
        """Write the object `key` to the new file `path` (the caller verifies it)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """Content of `key`, or None when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key` atomically."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """All keys starting with `prefix`."""

    # Conditional writes: the primitives a compare-and-swap is built from.

    @abstractmethod
    def create_bytes(self, key: str, data: bytes) -> bool:
        """Store `data` under `key` only if `key` does not exist, atomically; False when it already exists."""

    @abstractmethod
    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """Content of `key` and a tag naming this version of it (None when absent)."""

    @abstractmethod
    def replace_if(self, key: str, data: bytes, tag: str) -> bool:
        """Replace `key` with `data` only if its current version is still `tag`; False otherwise."""

    def share_url(self, key: str, expires: int = 7 * 24 * 3600) -> str:
        """An address a person can open for `key` (a presigned URL on S3, a file:// URL locally)."""
        return self.location(key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class LocalStorage(Storage):
    """A folder on the local file system; every write goes to a temp file that is then renamed."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root).expanduser().absolute()

    @property
    def url(self) -> str:
        return str(self._root)

    def location(self, key: str) -> str:
        return str(self._path(key))

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*key.split("/"))

    @contextmanager
    def _staged(self, key: str) -> Iterator[Path]:
        """Yield a temp path next to `key`'s file that replaces it when the block succeeds."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        temp = Path(name)
        try:
            yield temp
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def upload(self, key: str, path: Path, digest: FileDigest) -> None:
        try:
            with self._staged(key) as temp:
                if _copy_hashed(path, temp) != digest.sha256 or temp.stat().st_size != digest.size:
                    raise StorageError(f"copy of {path} failed verification: it changed while being published")
        except OSError as exc:
            raise StorageError(f"cannot write {self.location(key)}: {exc}") from exc

    def download(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except OSError as exc:
            raise StorageError(f"cannot read {self.location(key)}: {exc}") from exc

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.location(key)}: {exc}") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            with self._staged(key) as temp:
                temp.write_bytes(data)
        except OSError as exc:
            raise StorageError(f"cannot write {self.location(key)}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {self.location(key)}: {exc}") from exc
        for folder in self._path(key).parents:  # folders left empty go too, as they would in an object store
            if folder == self._root or not folder.is_relative_to(self._root):
                break
            try:
                folder.rmdir()
            except OSError:
                break

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write a temp file, then hard-link it to `key`: the link fails if `key` exists, with no lock."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(name, target)
            except FileExistsError:
                return False
            finally:
                os.unlink(name)
        except OSError as exc:
            raise StorageError(f"cannot write {self.location(key)}: {exc}") from exc
        return True

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        data = self.read_bytes(key)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def replace_if(self, key: str, data: bytes, tag: str) -> bool:
        """Replace when the content still hashes to `tag`. The check and the rename are two steps, so
        callers that need arbitration between writers use `create_bytes` (see `registry`)."""
        current = self.read_tagged(key)
        if current is None or current[1] != tag:
            return False
        self.write_bytes(key, data)
        return True

    def share_url(self, key: str, expires: int = 7 * 24 * 3600) -> str:
        return self._path(key).as_uri()

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix.rstrip("/"))
        for folder, _, files in os.walk(base):
            for name in files:
                yield (Path(folder) / name).relative_to(self._root).as_posix()


class S3Storage(Storage):
    """An S3 bucket and prefix (AWS or S3-compatible such as MinIO), accessed through boto3.

    Uploads carry a CRC32 checksum per request, which the server checks on receipt, and the file's
    sha256 as `x-amz-meta-sha256`. Afterwards head_object must report the size, sha256 and (when the
    server reports checksums) CRC32 read in the same pass that produced the manifest's sha256.
    """

    def __init__(self, url: str, settings: Settings) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"invalid S3 URL {url!r}: expected s3://bucket/prefix")
        self._bucket = parsed.netloc
        self._prefix = parsed.path.strip("/")
        key_id, secret = settings.aws_access_key_id, settings.aws_secret_access_key
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.aws_region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=_S3_CONFIG,
        )

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}".rstrip("/")

    def location(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._key(key)}"

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn boto3/botocore failures into `StorageError` naming the object."""
        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise StorageError(f"cannot {action} {self.location(key)}: {exc}") from exc

    def upload(self, key: str, path: Path, digest: FileDigest) -> None:
        extra = {"Metadata": {"sha256": digest.sha256}, "ChecksumAlgorithm": "CRC32"}
        with self._errors("upload", key):
            self._client.upload_file(str(path), self._bucket, self._key(key), ExtraArgs=extra, Config=_TRANSFER)
            head = self._client.head_object(Bucket=self._bucket, Key=self._key(key), ChecksumMode="ENABLED")
        stored = head.get("ChecksumCRC32")
        if (
            head["ContentLength"] != digest.size
            or head.get("Metadata", {}).get("sha256") != digest.sha256
            or (stored is not None and stored.split("-")[0] != digest.s3_crc32)
        ):
            raise StorageError(f"upload of {self.location(key)} failed verification: stored size, sha256 or CRC32 differ")

    def download(self, key: str, path: Path) -> None:
        with self._errors("download", key):
            self._client.download_file(self._bucket, self._key(key), str(path), Config=_TRANSFER)

    def read_bytes(self, key: str) -> bytes | None:
        with self._errors("read", key):
            try:
                return self._client.get_object(Bucket=self._bucket, Key=self._key(key))["Body"].read()
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                    return None
                raise

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors("write", key):
            self._client.put_object(Bucket=self._bucket, Key=self._key(key), Body=data, ChecksumAlgorithm="SHA256")

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self._bucket, Key=self._key(key))

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        """put_object with If-Match / If-None-Match; False when the server refuses the precondition."""
        with self._errors("write", key):
            try:
                self._client.put_object(Bucket=self._bucket, Key=self._key(key), Body=data,
                                        ChecksumAlgorithm="SHA256", **condition)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in _PRECONDITION_CODES or status in (409, 412):
                    return False
                raise
        return True

    def create_bytes(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        with self._errors("read", key):
            try:
                response = self._client.get_object(Bucket=self._bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                    return None
                raise
            return response["Body"].read(), response["ETag"]

    def replace_if(self, key: str, data: bytes, tag: str) -> bool:
        return self._conditional_put(key, data, IfMatch=tag)

    def share_url(self, key: str, expires: int = 7 * 24 * 3600) -> str:
        with self._errors("presign", key):
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": self._key(key)}, ExpiresIn=expires
            )

    def list_keys(self, prefix: str) -> Iterator[str]:
        start = len(self._key(""))
        with self._errors("list", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=self._key(prefix))
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][start:]


def open_storage(url: str | None = None) -> Storage:
    """Open the storage at `url` (default: the `storage_url` setting)."""
    settings = get_settings()
    url = url or settings.storage_url
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Storage(url, settings)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.netloc + parsed.path)))
    if parsed.scheme:
        raise StorageError(f"unsupported storage URL {url!r}: use s3://bucket/prefix, file:///path or a folder path")
    return LocalStorage(Path(url))


# ---------------------------------------------------------------- manifests


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


def run_key(run_id: str, model: str, rel: str = "") -> str:
    """The key of `rel` in a model run's folder, `<run-id>/<model>/<rel>`, directly under the storage root."""
    return f"{check_name(run_id, 'run id')}/{check_name(model, 'model name')}/{rel}"


def _run_prefix(run_id: str, model: str) -> str:
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


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
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


def _local_files(local_dir: Path) -> dict[str, Path]:
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


def _entries(hashing: dict[Future[FileDigest], str]) -> list[dict[str, Any]]:
    """Manifest file entries, in path order, once every file is hashed."""
    digests = {rel: future.result() for future, rel in hashing.items()}
    return [{"path": rel, "sha256": d.sha256, "size": d.size} for rel, d in sorted(digests.items())]


def _json_copy(extra: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON round-tripped copy of caller metadata; `StorageError` if it is not serialisable."""
    try:
        return json.loads(json.dumps(extra or {}))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"extra metadata must be JSON-serialisable: {exc}") from exc


def _build_manifest(run_id: str, model: str, entries: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "run_id": run_id,
        "model": model,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": entries,
        "extra": extra,
        "versions": _package_versions(),
        "git_commit": _git_commit(),
    }


# ---------------------------------------------------------------- public API


def read_manifest(run_id: str, model: str, storage: Storage | None = None) -> dict[str, Any] | None:
    """The manifest of a published model run, or None if it is not (completely) published."""
    storage = storage or open_storage()
    key = _run_prefix(run_id, model) + MANIFEST
    data = storage.read_bytes(key)
    return None if data is None else _parse_manifest(data, storage.location(key))


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
    storage = storage or open_storage()
    prefix = _run_prefix(run_id, model)
    files = _local_files(Path(local_dir))
    extra = _json_copy(extra)
    with ThreadPoolExecutor(max_workers=2) as pool:
        hashing = {pool.submit(digest_file, path): rel for rel, path in files.items()}
        old = read_manifest(run_id, model, storage)
        if old is not None:
            if old["files"] == _entries(hashing):
                log.info("%s/%s already published with identical files; nothing to do", run_id, model)
                return PublishResult(storage.location(prefix), old, uploaded=0, skipped=True)
            if not force:
                raise StorageError(
                    f"{run_id}/{model} is already published in {storage.url} with different files; use force to replace it"
                )
            storage.delete(prefix + MANIFEST)
        for future in as_completed(hashing):
            storage.upload(prefix + hashing[future], files[hashing[future]], future.result())
    entries = _entries(hashing)
    manifest = _build_manifest(run_id, model, entries, extra)
    storage.write_bytes(prefix + MANIFEST, json.dumps(manifest, indent=2).encode())
    for stale in {e["path"] for e in (old or {}).get("files", [])} - {e["path"] for e in entries}:
        storage.delete(prefix + stale)
    log.info("published %s/%s: %d files to %s", run_id, model, len(entries), storage.location(prefix))
    return PublishResult(storage.location(prefix), manifest, uploaded=len(entries), skipped=False)


def list_runs(storage: Storage | None = None) -> list[RunEntry]:
    """All completely published model runs (those with a manifest), sorted by run id and model."""
    storage = storage or open_storage()
    runs = []
    for key in storage.list_keys(""):
        parts = key.split("/")
        if len(parts) != 3 or parts[2] != MANIFEST or not all(_NAME_RE.fullmatch(p) for p in parts[:2]):
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
    storage = storage or open_storage()
    manifest = read_manifest(run_id, model, storage)
    if manifest is None:
        raise StorageError(f"{run_id}/{model} is not published in {storage.url}")
    return _fetch_files(manifest, _run_prefix(run_id, model), f"{run_id}/{model}", Path(dest), storage)


def _fetch_files(manifest: dict[str, Any], prefix: str, what: str, dest: Path, storage: Storage) -> Path:
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


# ---------------------------------------------------------------- training checkpoints


def _checkpoint_prefix(run_id: str, model: str, name: str | None = None) -> str:
    base = _run_prefix(run_id, model) + f"{CHECKPOINTS_DIR}/"
    return base + f"{check_name(name, 'checkpoint name')}/" if name is not None else base


def publish_checkpoint(local_dir: Path, run_id: str, model: str, name: str, storage: Storage) -> str:
    """Upload a checkpoint folder to `<run_id>/<model>/checkpoints/<name>/`, each file verified, manifest last.

    A checkpoint without its manifest does not exist for `list_checkpoints`, so a crash mid-upload is harmless.
    """
    prefix = _checkpoint_prefix(run_id, model, name)
    files = _local_files(Path(local_dir))
    with ThreadPoolExecutor(max_workers=2) as pool:
        hashing = {pool.submit(digest_file, path): rel for rel, path in files.items()}
        for future in as_completed(hashing):
            storage.upload(prefix + hashing[future], files[hashing[future]], future.result())
    manifest = _build_manifest(run_id, model, _entries(hashing), {"checkpoint": name})
    storage.write_bytes(prefix + MANIFEST, json.dumps(manifest, indent=2).encode())
    return storage.location(prefix)


def _checkpoint_manifest(run_id: str, model: str, name: str, storage: Storage) -> dict[str, Any] | None:
    key = _checkpoint_prefix(run_id, model, name) + MANIFEST
    data = storage.read_bytes(key)
    return None if data is None else _parse_manifest(data, storage.location(key))


def list_checkpoints(run_id: str, model: str, storage: Storage) -> list[str]:
    """Names of the complete (manifest-bearing) checkpoints of a model run, sorted."""
    base = _checkpoint_prefix(run_id, model)
    names = set()
    for key in storage.list_keys(base):
        parts = key[len(base):].split("/")
        if len(parts) == 2 and parts[1] == MANIFEST and _NAME_RE.fullmatch(parts[0]):
            names.add(parts[0])
    return sorted(names)


def fetch_checkpoint(run_id: str, model: str, name: str, dest: Path, storage: Storage) -> Path:
    """Download a published checkpoint into `dest` (absent or empty), every file verified."""
    manifest = _checkpoint_manifest(run_id, model, name, storage)
    if manifest is None:
        raise StorageError(f"checkpoint {name} of {run_id}/{model} is not published in {storage.url}")
    return _fetch_files(manifest, _checkpoint_prefix(run_id, model, name), f"{run_id}/{model}/{name}", Path(dest), storage)


def delete_checkpoint(run_id: str, model: str, name: str, storage: Storage) -> None:
    """Withdraw a checkpoint: its manifest first, then the files it listed."""
    prefix = _checkpoint_prefix(run_id, model, name)
    manifest = _checkpoint_manifest(run_id, model, name, storage)
    storage.delete(prefix + MANIFEST)
    for entry in (manifest or {}).get("files", []):
        storage.delete(prefix + entry["path"])
