"""One writer per run and model: a lease object in storage, `<run-id>/<model>/lease.json`.

A process takes the lease with a conditional create before it builds anything, so a second process with the
same run id and model is refused at once, with the holder's host, pid and start time. The holder renews the
lease in a background thread every quarter of its time to live (a compare-and-swap on the version it wrote).
A lease not renewed for its time to live has expired and may be taken over, with a compare-and-swap too, so of
two processes taking it over one wins; so may, at once, a lease whose holder was a process on this host that
no longer exists. Releasing deletes it. Readers of runs ignore it: it is not listed by any manifest.

`hold()` is re-entrant within a process: the CLI takes a run's leases before anything heavy is imported, and
the model runs it starts (in-process children included) find them held by this process and use them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from dialsum.errors import StorageError
from dialsum.processes import alive
from dialsum.storage.base import Storage
from dialsum.storage.manifest import run_key

log = logging.getLogger(__name__)

LEASE = "lease.json"
_HELD: dict[tuple[str, str, str], Lease] = {}
_HELD_LOCK = threading.Lock()


class LeaseHeld(StorageError):
    """Another live process holds the run's lease."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: host, pid and that process's start tick (to tell a reused pid), when it took the
    lease, when it last renewed it, and for how long a renewal keeps it."""

    host: str
    pid: int
    pid_start: int | None
    token: str
    started_at: float
    renewed_at: float
    ttl: float

    def expires_in(self, now: float | None = None) -> float:
        return self.renewed_at + self.ttl - (time.time() if now is None else now)

    def gone(self) -> bool:
        """True when the holder was a process on this host that no longer runs."""
        if self.host != socket.gethostname():
            return False
        return _process_start(self.pid) != self.pid_start or not alive(self.pid)

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {self.pid} on host {self.host} (since {since})"


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell it from a later process with its pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def parse_holder(data: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):
        return None


class Lease:
    """The lease of `<run-id>/<model>` in `storage`; `acquire()` or use as a context manager."""

    def __init__(self, storage: Storage, run_id: str, model: str, ttl: float = 60.0) -> None:
        self.storage, self.run_id, self.model, self.ttl = storage, run_id, model, ttl
        self.key = run_key(run_id, model, LEASE)
        self.token = secrets.token_hex(8)
        self.lost: Holder | None = None
        self._tag: str | None = None
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        pid = os.getpid()
        holder = Holder(
            socket.gethostname(), pid, _process_start(pid), self.token, self._started, time.time(), self.ttl
        )
        return json.dumps(asdict(holder)).encode()

    def holder(self) -> Holder | None:
        """The current holder (None when nobody holds the lease)."""
        current = self.storage.read_tagged(self.key)
        return None if current is None else parse_holder(current[0])

    def _try(self) -> Holder | None:
        """Take the lease if free, expired or left by a dead local process; else return its live holder."""
        data = self._record()
        if self.storage.create_bytes(self.key, data):
            self._tag = self.storage.read_tagged(self.key)[1]
            return None
        current = self.storage.read_tagged(self.key)
        if current is None:
            return self._try()
        holder = parse_holder(current[0])
        if holder is not None and holder.expires_in() > 0 and not holder.gone():
            return holder
        if not self.storage.replace_if(self.key, data, current[1]):
            return self._try()
        self._tag = self.storage.read_tagged(self.key)[1]
        what = "an unreadable lease" if holder is None else f"the lease of {holder.describe()}"
        log.info(
            "%s/%s: took over %s, which %s",
            self.run_id,
            self.model,
            what,
            "had expired" if holder is None or holder.expires_in() <= 0 else "no longer runs",
        )
        return None

    def _held_by(self, holder: Holder) -> LeaseHeld:
        return LeaseHeld(
            f"run {self.run_id}/{self.model} is being trained by {holder.describe()}; its lease in "
            f"{self.storage.url} was renewed {max(0, time.time() - holder.renewed_at):.0f} s ago and "
            f"expires in {max(0, holder.expires_in()):.0f} s if that process is gone; wait for it to "
            "finish, or use another run id"
        )

    def check_free(self) -> None:
        """`LeaseHeld` naming the holder when a live process holds the lease; takes nothing."""
        holder = self.holder()
        if holder is not None and holder.expires_in() > 0 and not holder.gone():
            raise self._held_by(holder)

    def acquire(self, wait: float = 0.0) -> Lease:
        """Take the lease, waiting up to `wait` seconds for a live holder's lease to expire; `LeaseHeld` if not."""
        deadline = time.monotonic() + wait
        while (holder := self._try()) is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._held_by(holder)
            time.sleep(min(left, max(0.2, min(self.ttl / 4, holder.expires_in() + 0.1))))
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.model}", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except StorageError as exc:
                log.warning("%s/%s: could not renew the run's lease (%s); retrying", self.run_id, self.model, exc)
            if self.lost is not None:
                return

    def renew(self) -> None:
        """Write a new renewal time over the version this process wrote; records a lost lease in `lost`."""
        if self.storage.replace_if(self.key, self._record(), self._tag or ""):
            self._tag = self.storage.read_tagged(self.key)[1]
            return
        self.lost = self.holder() or Holder("?", 0, None, "", 0.0, 0.0, 0.0)
        log.error(
            "%s/%s: lost the run's lease to %s; this process will not publish",
            self.run_id,
            self.model,
            self.lost.describe(),
        )

    def check(self) -> None:
        """`LeaseHeld` when the lease was taken over (this process stalled for longer than its time to live)."""
        if self.lost is not None:
            raise LeaseHeld(
                f"run {self.run_id}/{self.model} was taken over by {self.lost.describe()} while this "
                "process stalled; not publishing"
            )

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        current = self.storage.read_tagged(self.key)
        holder = None if current is None else parse_holder(current[0])
        if holder is not None and holder.token == self.token:
            self.storage.delete(self.key)

    def __enter__(self) -> Lease:
        return self if self._thread is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def hold(storage: Storage, run_id: str, model: str, ttl: float, wait: float = 0.0) -> Iterator[Lease]:
    """Hold the lease of `run_id`/`model` for the block: the one this process already holds, else a new one
    (acquired, waiting up to `wait` seconds, and released at the end)."""
    key = (storage.url, run_id, model)
    with _HELD_LOCK:
        held = _HELD.get(key)
    if held is not None:
        yield held
        return
    lease = Lease(storage, run_id, model, ttl).acquire(wait)
    with _HELD_LOCK:
        _HELD[key] = lease
    try:
        yield lease
    finally:
        with _HELD_LOCK:
            _HELD.pop(key, None)
        lease.release()
