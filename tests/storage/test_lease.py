"""One writer per run and model: the lease object, its heartbeat, expiry and takeover, on a folder and on S3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.s3_server import s3_client

from dialsum.storage import LocalStorage, open_storage
from dialsum.storage.lease import LEASE, Lease, LeaseHeld, hold, parse_holder


def record(store, run_id: str = "r1", model: str = "m") -> dict:
    return json.loads(store.read_bytes(f"{run_id}/{model}/{LEASE}"))


def test_a_second_taker_is_refused_naming_the_holder_and_release_leaves_nothing(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    first = Lease(store, "r1", "m", ttl=30).acquire()
    try:
        with pytest.raises(
            LeaseHeld,
            match=rf"run r1/m is being trained by pid {os.getpid()} on host "
            rf"{socket.gethostname()} \(since .* UTC\)",
        ):
            Lease(store, "r1", "m", ttl=30).acquire()
        held = record(store)
        assert (held["pid"], held["token"]) == (os.getpid(), first.token)
        Lease(store, "r1", "other-model", ttl=30).acquire().release()  # another model of the run is free
    finally:
        first.release()
    assert not (tmp_path / "store" / "r1").exists()  # nothing left, not even empty folders


def test_the_heartbeat_renews_and_a_lease_left_unrenewed_expires(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    lease = Lease(store, "r1", "m", ttl=0.8).acquire()
    first = record(store)["renewed_at"]
    time.sleep(1.2)  # longer than the ttl: only renewals keep it
    assert record(store)["renewed_at"] > first
    with pytest.raises(LeaseHeld):
        Lease(store, "r1", "m", ttl=0.8).acquire()
    lease._stop.set()  # the holder stalls: no more renewals
    lease._thread.join()
    time.sleep(1.0)
    taker = Lease(store, "r1", "m", ttl=30).acquire()
    assert record(store)["token"] == taker.token
    with pytest.raises(LeaseHeld, match="taken over"):
        lease.renew()
        lease.check()
    lease.release()  # not its lease any more: the taker's stays
    assert record(store)["token"] == taker.token
    taker.release()


def test_a_lease_whose_local_holder_died_is_taken_over_at_once(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {
        "host": socket.gethostname(),
        "pid": dead.pid,
        "pid_start": 1,
        "token": "gone",
        "started_at": time.time(),
        "renewed_at": time.time(),
        "ttl": 3600,
    }
    store.write_bytes(f"r1/m/{LEASE}", json.dumps(stale).encode())
    assert parse_holder(store.read_bytes(f"r1/m/{LEASE}")).gone()
    started = time.monotonic()
    Lease(store, "r1", "m", ttl=30).acquire().release()
    assert time.monotonic() - started < 2


def test_a_live_holder_on_another_host_is_waited_for_until_it_expires(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    other = {
        "host": "elsewhere",
        "pid": 1,
        "pid_start": None,
        "token": "t",
        "started_at": time.time(),
        "renewed_at": time.time(),
        "ttl": 1.0,
    }
    store.write_bytes(f"r1/m/{LEASE}", json.dumps(other).encode())
    with pytest.raises(LeaseHeld, match="pid 1 on host elsewhere"):
        Lease(store, "r1", "m", ttl=30).acquire()
    started = time.monotonic()
    Lease(store, "r1", "m", ttl=30).acquire(wait=5).release()
    assert 0.2 < time.monotonic() - started < 3


def test_of_many_takers_of_an_expired_lease_exactly_one_wins(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    expired = {
        "host": "elsewhere",
        "pid": 1,
        "pid_start": None,
        "token": "t",
        "started_at": 0.0,
        "renewed_at": 0.0,
        "ttl": 1.0,
    }
    store.write_bytes(f"r1/m/{LEASE}", json.dumps(expired).encode())
    winners, barrier = [], threading.Barrier(6)

    def take() -> None:
        lease = Lease(store, "r1", "m", ttl=30)
        barrier.wait()
        try:
            lease._try() is None and winners.append(lease)
        except LeaseHeld:
            pass

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and record(store)["token"] == winners[0].token


def test_hold_is_reentrant_within_a_process(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    with hold(store, "r1", "m", ttl=30) as outer:
        with hold(store, "r1", "m", ttl=30) as inner:
            assert inner is outer
        assert record(store)["token"] == outer.token  # the inner block did not release it
    assert store.read_bytes(f"r1/m/{LEASE}") is None


def test_the_lease_works_on_s3(s3_bucket: str, moto_server, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_storage(f"s3://{s3_bucket}/leases")
    first = Lease(store, "r1", "m", ttl=30).acquire()
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
        Lease(store, "r1", "m", ttl=30).acquire()
    first.renew()
    assert first.lost is None
    first.release()
    keys = s3_client(moto_server.endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="leases/").get("Contents", [])
    assert keys == []
