"""Run a function as an unprivileged user in a forked child, so permission checks hold also under root."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

NOBODY = 65534


def call_as(uid: int, fn: Callable[[], Any]) -> tuple[str, Any]:
    """`("ok", result)` or `("error", exception)` of `fn()` run with `uid` (and its gid) in a child process."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            outcome = ("ok", fn())
        except BaseException as exc:  # the parent inspects it
            outcome = ("error", exc)
        with os.fdopen(write, "wb") as out:
            pickle.dump(outcome, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as inp:
        outcome = pickle.load(inp)
    os.waitpid(pid, 0)
    return outcome
