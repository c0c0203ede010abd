"""What every storage backend shares: the `Storage` interface, valid names and paths, and file digests.

Keys are '/'-separated and relative to the storage root. Backends live in `local.py` and `s3.py`; what is
stored (run folders, manifests, checkpoints) is `manifest.py` and `checkpoints.py`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dialsum.config import NAME_PATTERN
from dialsum.errors import StorageError

MANIFEST = "manifest.json"
READ_CHUNK = 1024 * 1024
PART_SIZE = 16 * 1024 * 1024  # S3 multipart threshold and part size (s3.py uploads with it; digests follow it)

NAME_RE = re.compile(NAME_PATTERN)
_PATH_PART_RE = re.compile(r"[A-Za-z0-9._+=@-]{1,255}")


def check_name(value: str, what: str) -> str:
    """Return `value` if it is a valid run id or model name, else raise `StorageError`."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise StorageError(
            f"invalid {what} {value!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
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
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy `src` to `dst` and return the hex sha256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while chunk := reader.read(READ_CHUNK):
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
    from s3transfer.utils import (
        ChunksizeAdjuster,  # with boto3, imported only when a file is published
    )

    stat_size = path.stat().st_size
    part_size = ChunksizeAdjuster().adjust_chunksize(PART_SIZE, stat_size)
    sha, size, part_crcs = hashlib.sha256(), 0, []
    with open(path, "rb") as handle:
        while chunk := handle.read(part_size):
            sha.update(chunk)
            size += len(chunk)
            part_crcs.append(zlib.crc32(chunk).to_bytes(4, "big"))
    if size >= PART_SIZE:
        crc = zlib.crc32(b"".join(part_crcs)).to_bytes(4, "big")
    else:
        crc = part_crcs[0] if part_crcs else zlib.crc32(b"").to_bytes(4, "big")
    return FileDigest(sha.hexdigest(), size, base64.b64encode(crc).decode())


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
