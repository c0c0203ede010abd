"""Ctrl-C and SIGTERM: a process-wide request to stop every model run of this process at its next safe point.

`on_signals()` installs the handlers for one command. The first SIGINT (or any SIGTERM, as `timeout`, `docker
stop`, systemd and Kubernetes send it) sets the request: the training loop
finishes its step, writes (and publishes) a checkpoint and raises `Interrupted`; a run between phases stops
before the next one; launchers start no further model. Where the main thread itself does the work outside a
`cooperative()` region (loading a model, predicting in single mode), the first signal stops it at once, as
Python's default SIGINT would. A second SIGINT exits at once, after the callbacks of `at_hard_exit`; a repeated
SIGTERM changes nothing (a whole process group or cgroup may receive it more than once), and a process still
running `DIALSUM_STOP_GRACE_SECONDS` after SIGTERM exits at once (before a container's kill). The command exits
130 after SIGINT, 143 after SIGTERM (`exit_code`).

Prefect's flow engine replaces the SIGTERM handler while a flow runs in the main thread; a flow that the CLI
runs in this process calls `reclaim()` first, so SIGTERM keeps meaning "stop as Ctrl-C does". A local child
process of a command (sweep and K-fold children) calls `as_child()`: the signals its parent blocked while
starting it are handled from then on, SIGTERM and the first SIGINT only ask it to stop.

Signal handlers run in the main thread only; runs in other threads (train-all's in-process children) see the
request through `requested()`. Torch-free: the CLI installs the handler before anything heavy is imported.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dialsum.errors import DialsumError

log = logging.getLogger(__name__)

EXIT_CODE = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_REQUEST = threading.Event()
_RECEIVED: list[int] = []  # the signal that asked to stop first
_HINT: list[str] = []  # how to continue after a stop, e.g. "--resume <id>" (`continue_with`)
_COOPERATIVE = [0]  # depth of cooperative() regions entered by the main thread
_HARD_EXIT: list[Callable[[], None]] = []
_TIMERS: list[threading.Timer] = []  # the grace period after SIGTERM (`_exit_after_grace`)
_INSTALLED: list[Callable] = []  # the handlers `on_signals` / `as_child` installed, innermost last


class Preempted(DialsumError):
    """Training stopped on SIGTERM after publishing a checkpoint (`engine.checkpoint.stop_on_sigterm`)."""


class Interrupted(DialsumError):
    """A model run that stopped at a safe point after Ctrl-C; what it finished is kept, and the same run id
    continues from there. `str()` is the one line that says where it stopped."""


class StoppingProgress:
    """A progress bar's `update` that stops generation between batches after a stop request."""

    def __init__(self, bar, where: str) -> None:
        self.bar, self.where = bar, where

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        check(self.where)


def request() -> None:
    _REQUEST.set()


def requested() -> bool:
    return _REQUEST.is_set()


def clear() -> None:
    """Forget a stop request (a new command in the same process, or a test)."""
    _REQUEST.clear()
    _RECEIVED.clear()
    _HINT.clear()
    _cancel_timers()


def exit_code() -> int:
    """The exit code of a stopped command: 128 + the signal that stopped it (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + _RECEIVED[0] if _RECEIVED else EXIT_CODE


def signalled() -> bool:
    """Whether a signal (not a call of `request`) asked this process to stop."""
    return bool(_RECEIVED)


def cause() -> str:
    """What asked to stop, in words: "Ctrl-C" or "SIGTERM"."""
    return "SIGTERM" if _RECEIVED and _RECEIVED[0] == signal.SIGTERM else "Ctrl-C"


def continue_with(hint: str | None) -> None:
    """Record how the command continues after a stop (e.g. `--resume <id>`), for the line a hard exit prints."""
    _HINT[:] = [hint] if hint else []


def check(where: str) -> None:
    """Raise `Interrupted(where)` when a stop was requested: called between phases."""
    if _REQUEST.is_set():
        raise Interrupted(where)


@contextmanager
def cooperative() -> Iterator[None]:
    """Within this region the main thread polls `requested()` itself, so the first SIGINT only sets the request."""
    main = threading.current_thread() is threading.main_thread()
    _COOPERATIVE[0] += main
    try:
        yield
    finally:
        _COOPERATIVE[0] -= main


def at_hard_exit(callback: Callable[[], None]) -> Callable[[], None]:
    """Run `callback` (e.g. stop a server this process started) before a second Ctrl-C exits; returns a remover."""
    _HARD_EXIT.append(callback)
    return lambda: _HARD_EXIT.remove(callback) if callback in _HARD_EXIT else None


def _hard_exit(announce: bool = True) -> None:
    if announce:  # a local child leaves the line to its parent
        how = f"continue with {_HINT[0]}" if _HINT else "running the same run id continues from the newest"
        print(
            f"dialsum: stopped at once (second Ctrl-C); published checkpoints are kept; {how}",
            file=sys.stderr,
            flush=True,
        )
    for callback in reversed(_HARD_EXIT):
        try:
            callback()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    logging.shutdown()
    os._exit(exit_code())


def _handler(signum, frame) -> None:
    if _REQUEST.is_set():
        if signum == signal.SIGINT:
            _hard_exit()
        return
    _request(signum)
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    print(
        f"dialsum: stopping ({name}): each model finishes its current step and saves a checkpoint "
        "(Ctrl-C again stops at once)",
        file=sys.stderr,
        flush=True,
    )


def _request(signum: int) -> None:
    """The first stop signal: set the request; after SIGTERM exit hard once the grace period is over; outside a
    `cooperative()` region stop the main thread's work at once."""
    _RECEIVED[:] = [signum]
    _REQUEST.set()
    if signum == signal.SIGTERM:
        _exit_after_grace()
    if _COOPERATIVE[0] <= 0:
        raise KeyboardInterrupt


def _exit_after_grace() -> None:
    """After SIGTERM a container is killed after its grace period: exit at once before that, if still running
    after `DIALSUM_STOP_GRACE_SECONDS`."""
    from dialsum.settings import get_settings

    def late() -> None:
        log.error("not stopped within the %.0f s grace period after SIGTERM; exiting", grace)
        _hard_exit(announce=False)

    grace = get_settings().stop_grace_seconds
    timer = threading.Timer(grace, late)
    timer.daemon = True
    timer.start()
    _TIMERS.append(timer)


def _cancel_timers() -> None:
    while _TIMERS:
        _TIMERS.pop().cancel()


def _child_handler(signum, frame) -> None:
    """A local child's handler: SIGTERM (the parent passing on a stop) never exits at once, and neither does the
    first SIGINT, however many processes received it."""
    if _REQUEST.is_set() and signum == signal.SIGINT and _RECEIVED and _RECEIVED[0] == signal.SIGINT:
        _hard_exit(announce=False)
    if not _REQUEST.is_set():
        _request(signum)


def handling() -> bool:
    """Whether this process's SIGTERM handler is ours (the CLI's or a local child's)."""
    try:
        return signal.getsignal(signal.SIGTERM) in (_handler, _child_handler)
    except ValueError:
        return False


def reclaim() -> None:
    """In a flow that the CLI runs in its main thread: take SIGTERM back from Prefect's engine, which would end the
    flow Crashed at once while its children run on. Nothing changes where the CLI's handler is not installed."""
    if _INSTALLED and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _INSTALLED[-1])


def as_child() -> None:
    """In a local child process (main thread): stop on SIGINT or SIGTERM as `on_signals` does, then unblock the
    signals its parent blocked while starting it (a signal that came meanwhile is handled now)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        signal.signal(signum, _child_handler)
    _INSTALLED.append(_child_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(SIGNALS))


@contextmanager
def blocked(*signums: int) -> Iterator[None]:
    """Block `signums` (default: SIGINT and SIGTERM) in this thread while starting a child process: the child
    starts with them blocked, so one that comes early waits until the child handles it (`as_child`) rather than
    killing it half started."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums or SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def on_signals() -> Iterator[None]:
    """Install the Ctrl-C and SIGTERM handlers for the duration (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    _INSTALLED.append(_handler)
    try:
        yield
    finally:
        _cancel_timers()  # the command is done: it exits now
        _INSTALLED.remove(_handler)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
