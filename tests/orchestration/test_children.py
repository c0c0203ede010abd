"""Launching children without waiting (`run_all`): after a stop request no child starts, local children are asked
to stop and waited for (they are STOPPED, not failed), and a child left on a worker is not waited for."""

from __future__ import annotations

import logging

import pytest

from dialsum.orchestration.children import run_all
from dialsum.state import stop
from dialsum.tuning.loop import COMPLETED, RUNNING, STOPPED, Status


class FakeLauncher:
    def __init__(self, local: bool = True) -> None:
        self.slots, self.local = ["slot-0", "slot-1"], local
        self.launched: list[str] = []
        self.interrupted: list[str] = []
        self.polls = 0

    def launch(self, key: str, parameters: dict, slot: str, tags: list[str]) -> str:
        self.launched.append(key)
        return key

    def status(self, handle: str) -> Status:
        self.polls += 1
        if self.polls == 2:
            stop.request()  # Ctrl-C while the first two children run
        if handle in self.interrupted:
            return Status(STOPPED, f"{handle}: stopped at step 1 of 3")
        return Status(RUNNING)

    def interrupt(self, handle: str) -> bool:
        if self.local:
            self.interrupted.append(handle)
        return self.local


@pytest.fixture(autouse=True)
def _no_request():
    stop.clear()
    yield
    stop.clear()


@pytest.mark.parametrize("local", [True, False])
def test_after_a_stop_request_no_child_starts_and_running_ones_stop(local: bool) -> None:
    launcher = FakeLauncher(local)
    jobs = {f"k-f{i}": {} for i in range(4)}
    done = run_all(launcher, jobs, parallel=2, relaunches=2, tags=[], poll_seconds=0, logger=logging.getLogger())
    assert launcher.launched == ["k-f0-a0", "k-f1-a0"]
    if local:
        assert launcher.interrupted == ["k-f0-a0", "k-f1-a0"]
        assert {k: s.state for k, s in done.items()} == {"k-f0": STOPPED, "k-f1": STOPPED}
    else:  # on a worker: left running, adopted by the next parent under the same key
        assert done == {}
    assert COMPLETED not in {s.state for s in done.values()}
