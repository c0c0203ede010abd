"""Local processes, as the leases, lifelines and children of a run see them: whether a process id is alive."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether process `pid` is running: it exists (another user's process too) and is not a zombie (exited, not
    yet reaped by its parent), which holds nothing and never runs again."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
