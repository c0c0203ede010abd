"""Which storage this is. Run ids, study names and K-fold run ids are unique only inside one storage, so anything
kept outside it under such a name (a Prefect launch key, shared by every storage a server trains into; a parent's
local copy of a study journal, shared by every storage on a machine) carries the storage's scope as well.

The scope hashes the storage's URL together with a random id the storage holds (`.dialsum/storage-id`, created on
first use, never changed): two storages never share a scope, whether they differ by URL (another bucket, prefix
or folder) or only by what the URL reaches (the same folder path on two hosts, the same bucket on two endpoints).
"""

from __future__ import annotations

import hashlib
import secrets

from dialsum.errors import StorageError
from dialsum.storage.base import Storage

ID_KEY = ".dialsum/storage-id"


def storage_scope(store: Storage) -> str:
    """12 hex digits naming `store`; the same for every process that opens it with the same URL."""
    held = store.read_bytes(ID_KEY)
    if held is None:
        store.create_bytes(ID_KEY, secrets.token_hex(16).encode())  # another process may win: read what stands
        held = store.read_bytes(ID_KEY)
    if not held:
        raise StorageError(f"{store.location(ID_KEY)}: the storage's id is missing or empty")
    return hashlib.sha256(f"{store.url}\n".encode() + held.strip()).hexdigest()[:12]
