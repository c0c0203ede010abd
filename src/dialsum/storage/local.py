"""A storage root on the local file system: every write is a temp file renamed into place."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dialsum.errors import StorageError
from dialsum.storage.base import FileDigest, Storage, copy_hashed


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON to the local file `path` atomically: a temp file of this process beside it (never another
    process's), renamed into place, so a reader sees the old file or the new one, never a part."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(temp, path)


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
                if copy_hashed(path, temp) != digest.sha256 or temp.stat().st_size != digest.size:
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
        """Replace when the content still hashes to `tag`: the check and the rename happen under an exclusive
        `flock` of the key's folder, so processes on this machine (the lease's heartbeat and a takeover) never
        both succeed. Over a network file system, arbitration between machines rests on `create_bytes`."""
        try:
            folder = os.open(self._path(key).parent, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot write {self.location(key)}: {exc}") from exc
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            current = self.read_tagged(key)
            if current is None or current[1] != tag:
                return False
            self.write_bytes(key, data)
            return True
        finally:
            os.close(folder)

    def share_url(self, key: str, expires: int = 7 * 24 * 3600) -> str:
        return self._path(key).as_uri()

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix.rstrip("/"))
        for folder, _, files in os.walk(base):
            for name in files:
                yield (Path(folder) / name).relative_to(self._root).as_posix()
