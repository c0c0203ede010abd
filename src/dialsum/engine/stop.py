"""Ctrl-C: a process-wide request to stop every model run of this process at its next safe point.

`on_sigint()` installs the handler for one command. The first SIGINT sets the request: the training loop
finishes its step, writes (and publishes) a checkpoint and raises `Interrupted`; a run between phases stops
before the next one; launchers start no further model. Where the main thread itself does the work outside a
`cooperative()` region (loading a model, predicting in single mode), the first SIGINT stops it at once, as
Python's default would. A second SIGINT exits at once with code 130, after the callbacks of `at_hard_exit`.

Signal handlers run in the main thread only; runs in other threads (train-all's in-process children) see the
request through `requested()`. Torch-free: the CLI installs the handler before anything heavy is imported.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from dialsum.errors import DialsumError

log = logging.getLogger(__name__)

EXIT_CODE = 130
_REQUEST = threading.Event()
_COOPERATIVE = [0]  # depth of cooperative() regions entered by the main thread
_HARD_EXIT: list[Callable[[], None]] = []


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


def _hard_exit() -> None:
    print("dialsum: stopped at once (second Ctrl-C); published checkpoints are kept, and running the same run id "
          "continues from the newest", file=sys.stderr, flush=True)
    for callback in reversed(_HARD_EXIT):
        try:
            callback()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    logging.shutdown()
    os._exit(EXIT_CODE)


def _handler(signum, frame) -> None:
    if _REQUEST.is_set():
        _hard_exit()
    _REQUEST.set()
    if _COOPERATIVE[0] <= 0:
        raise KeyboardInterrupt
    print("dialsum: stopping: each model finishes its current step and saves a checkpoint "
          "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)


@contextmanager
def on_sigint() -> Iterator[None]:
    """Install the two-stage Ctrl-C handler for the duration (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
