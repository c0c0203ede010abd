"""Whether a process is alive: a running one is, an exited one is not, and neither is a zombie (exited, unreaped)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from dialsum.processes import alive
from dialsum.storage import LocalStorage
from dialsum.storage.lease import LEASE, _process_start, parse_holder


def _zombie() -> subprocess.Popen:
    """A child that has exited and is not reaped yet (no wait())."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{child.pid}/stat", encoding="ascii") as handle:
            if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                return child
        time.sleep(0.05)
    raise AssertionError("the child did not exit")


def test_a_running_process_is_alive_and_a_zombie_or_reaped_one_is_not() -> None:
    assert alive(os.getpid())
    child = _zombie()
    try:
        assert not alive(child.pid)
    finally:
        child.wait()
    assert not alive(child.pid)


def test_a_lease_held_by_a_zombie_on_this_host_is_gone(tmp_path: Path) -> None:
    child = _zombie()
    try:
        store = LocalStorage(tmp_path / "store")
        held = {
            "host": socket.gethostname(),
            "pid": child.pid,
            "pid_start": _process_start(child.pid),
            "token": "t",
            "started_at": time.time(),
            "renewed_at": time.time(),
            "ttl": 3600,
        }
        store.write_bytes(f"r1/m/{LEASE}", json.dumps(held).encode())
        assert parse_holder(store.read_bytes(f"r1/m/{LEASE}")).gone()
    finally:
        child.wait()
