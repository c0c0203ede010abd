"""Processes the tests start in a session of their own (a server, a worker), stopped as a whole group."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start_group(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `command` in its own session (so its whole process group can be stopped), output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group by PID, SIGKILL it if the leader has not exited within `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def has_env(proc: Path, entry: bytes) -> bool:
    """Whether the process at `/proc/<pid>` has `entry` (b"NAME=value") in its environment."""
    try:
        return entry in (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
