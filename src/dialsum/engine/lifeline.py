"""Child processes that never outlive the command that started them, however it ends (`kill -9` included).

A process that starts a child puts its own pid in the child's environment (`child_env`, as `DIALSUM_PARENT_PID`).
The child calls `watch_parent()`: a daemon thread polls its parent pid, and once the parent is gone (the child
was re-parented) it sends itself SIGTERM, so it stops as after a stop request, and exits at once if it is still
there `grace` seconds later. Polling the parent pid, unlike a parent-death signal, does not depend on which
thread of the parent started the child. A third-party program (the Prefect API server, `torch.distributed.run`,
`accelerate launch`) runs under `python -m dialsum.engine.lifeline -m MODULE ARGS…`, which watches the parent,
then runs the module in the same process with itself as the parent its own children watch.

Torch-free and Prefect-free: the CLI and the temporary API server import it.
"""

from __future__ import annotations

import math
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dialsum.processes import alive

PARENT_ENV = "DIALSUM_PARENT_PID"
POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0
_WATCHING = threading.Event()


def child_env() -> dict[str, str]:
    """The environment entry a child needs to watch this process."""
    return {PARENT_ENV: str(os.getpid())}


@contextmanager
def as_parent() -> Iterator[None]:
    """While a child starts that inherits this process's environment as it is (a multiprocessing spawn), put this
    process's pid in it, so the child can watch from its first import on."""
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous


def wrap(command: list[str]) -> list[str]:
    """`python -m MODULE ARGS…` run under the lifeline wrapper (a command of another form is returned as it is)."""
    if len(command) > 2 and command[0] == sys.executable and command[1] == "-m":
        return [sys.executable, "-m", __name__, *command[1:]]
    return list(command)


def _end(grace: float) -> None:
    """The parent is gone: stop as on SIGTERM, then exit at once if still here after `grace` seconds. The exit
    comes from the kernel (SIGALRM left at its default action) where it can: C code that holds the interpreter
    lock (Kiwi loading its model, for seconds) would otherwise hold this thread's own exit back."""
    os.kill(os.getpid(), signal.SIGTERM)
    if signal.getsignal(signal.SIGALRM) == signal.SIG_DFL:
        signal.alarm(max(1, math.ceil(grace)))
    time.sleep(grace)
    os._exit(1)


def _watch(parent: int, poll: float, grace: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll)
    _end(grace)


def watch_parent(poll: float = POLL_SECONDS, grace: float = GRACE_SECONDS) -> bool:
    """When a dialsum process started this one (`DIALSUM_PARENT_PID`), end this process once its parent is gone;
    True when watching. A grandchild (a data-parallel rank under its launcher) watches its own parent."""
    expected = os.environ.get(PARENT_ENV, "")
    if not expected.isdigit():
        return False
    if _WATCHING.is_set():
        return True
    parent = os.getppid()
    if parent != int(expected) and not alive(int(expected)):
        threading.Thread(target=_end, args=(grace,), daemon=True, name="dialsum-lifeline").start()
        return True
    _WATCHING.set()
    threading.Thread(target=_watch, args=(parent, poll, grace), daemon=True, name="dialsum-lifeline").start()
    return True


def main(argv: list[str]) -> None:
    """`python -m dialsum.engine.lifeline -m MODULE ARGS…`: watch the parent, then run MODULE as `__main__`."""
    if len(argv) < 2 or argv[0] != "-m":
        sys.exit("usage: python -m dialsum.engine.lifeline -m MODULE [ARGS...]")
    watch_parent()
    os.environ[PARENT_ENV] = str(os.getpid())
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
