"""The parent's study loop with a stand-in executor: budget, slots, failures and requeues, pruning, and a parent
that dies at any point and is restarted from the storage snapshot on another machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dialsum.storage import LocalStorage
from dialsum.tuning.loop import COMPLETED, FAILED, RUNNING, STOPPED, Status, StudyLoop, TrialRun
from dialsum.tuning.space import SearchSpace
from dialsum.tuning.study import StudyJournal

SPACE = SearchSpace.model_validate(
    {
        "params": {
            "training.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
            "training.warmup_steps": {"low": 0.0, "high": 0.2},
        },
        "pruner": {"type": "none"},
    }
)


class FakeExecutor:
    """Children that take `duration` polls, publish a curve point per poll and finish with a score; the "server"
    state (handles, polls) outlives a parent, as a Prefect server does."""

    def __init__(self, duration: int = 3, fail: dict[str, str] | None = None, slots=("gpu-0", "gpu-1")) -> None:
        self.duration, self.fail, self.slots = duration, dict(fail or {}), list(slots)
        self.polls: dict[str, int] = {}
        self.params: dict[str, dict] = {}
        self.stopped: dict[str, int] = {}
        self.launches: list[str] = []
        self.peak = 0

    def running(self) -> int:
        return sum(1 for h in self.polls if self._state(h) == RUNNING)

    def _state(self, handle: str) -> str:
        polls = self.polls[handle]
        if handle in self.fail and polls >= 1:
            return FAILED
        if handle in self.stopped and polls > self.stopped[handle]:
            return COMPLETED
        return COMPLETED if polls >= self.duration else RUNNING

    def launch(self, run: TrialRun) -> str:
        self.launches.append(run.run_id)
        if run.run_id not in self.polls:  # idempotent per trial, like run_deployment's idempotency key
            self.polls[run.run_id], self.params[run.run_id] = 0, dict(run.params)
        self.peak = max(self.peak, self.running())
        return run.run_id

    def status(self, handle: str) -> Status:
        if self._state(handle) == RUNNING:
            self.polls[handle] += 1
        state = self._state(handle)
        message = self.fail.get(handle, "") if state == FAILED else ""
        return Status(state, message, 1.0, permanent=message.startswith("Failed: ConfigError"))

    def value(self, run_id: str, step: int) -> float:
        lr = self.params[run_id]["training.learning_rate"]
        return 10 * step * (1 - abs(lr - 1e-3) * 50)

    def curve(self, run: TrialRun) -> list[dict[str, Any]]:
        steps = min(self.polls[run.run_id], self.duration)
        return [{"step": s, "dev_score": self.value(run.run_id, s)} for s in range(1, steps + 1)]

    def result(self, run: TrialRun) -> dict[str, Any]:
        steps = min(self.polls[run.run_id], self.duration)
        value = self.value(run.run_id, steps)  # the full-dev score is another figure: trials rank on the selection part
        return {
            "dev": {"score": -value},
            "dev_selection": {"score": value},
            "train_steps": steps,
            "training": {"stop_requested": run.run_id in self.stopped},
        }

    def stop(self, run: TrialRun, reason: str) -> None:
        self.stopped[run.run_id] = self.polls[run.run_id]


class Killed(Exception):
    """The parent dies here (kill -9): nothing after this point runs."""


def make_loop(
    store: LocalStorage,
    folder: Path,
    executor: FakeExecutor,
    budget: int = 8,
    space: SearchSpace = SPACE,
    die_after: int | None = None,
    check=lambda params: None,
) -> tuple[StudyLoop, StudyJournal]:
    journal = StudyJournal("st", store, folder)
    journal.restore()
    study = journal.open(journal.check_space(space), seed=3)
    calls = {"n": 0}

    def on_change() -> None:
        journal.snapshot()
        calls["n"] += 1
        if die_after is not None and calls["n"] >= die_after:
            raise Killed

    loop = StudyLoop(
        study,
        space,
        executor,
        budget=budget,
        parallel=2,
        seed=3,
        run_prefix="st",
        check=check,
        on_change=on_change,
        poll_seconds=0,
    )
    return loop, journal


def states(loop: StudyLoop) -> list[str]:
    return [t.state.name for t in loop.study.get_trials()]


def test_the_budget_counts_every_trial_and_two_slots_run_two_at_once(tmp_path: Path) -> None:
    executor = FakeExecutor()
    loop, _ = make_loop(LocalStorage(tmp_path / "store"), tmp_path / "a", executor)
    loop.run()
    assert states(loop) == ["COMPLETE"] * 8
    assert executor.peak == loop.peak == 2
    assert sorted(executor.launches) == [f"st-t{n:04d}" for n in range(8)]
    params = {tuple(sorted(t.params.items())) for t in loop.study.get_trials()}
    assert len(params) == 8
    slots = [t.user_attrs["slot"] for t in loop.study.get_trials()]
    assert set(slots) == {"gpu-0", "gpu-1"}


def test_a_failed_child_is_queued_once_more_and_a_config_failure_is_not(tmp_path: Path) -> None:
    # trial 1 crashes; its parameters come back as trial 2 (queued at once), which crashes too: no third try.
    # trial 4 fails on its config: running it again would fail the same way.
    executor = FakeExecutor(
        fail={
            "st-t0001": "Crashed: killed",
            "st-t0002": "Crashed: again",
            "st-t0004": "Failed: ConfigError: lora.r too big",
        }
    )
    loop, _ = make_loop(LocalStorage(tmp_path / "store"), tmp_path / "a", executor, budget=6)
    loop.run()
    trials = loop.study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].user_attrs["requeued_from"] == 1 and trials[2].params == trials[1].params
    assert [t.number for t in trials if "requeued_from" in t.user_attrs] == [2]
    assert "Crashed" in trials[1].user_attrs["error"] and "ConfigError" in trials[4].user_attrs["error"]


def test_parameters_that_do_not_configure_the_model_fail_that_trial_without_a_child(tmp_path: Path) -> None:
    executor = FakeExecutor()

    def check(params: dict) -> str | None:
        return (
            "tiny-bart.yaml: --set training.warmup_steps=...: too much"
            if params["training.warmup_steps"] > 0.1
            else None
        )

    loop, _ = make_loop(LocalStorage(tmp_path / "store"), tmp_path / "a", executor, budget=6, check=check)
    loop.run()
    trials = loop.study.get_trials()
    bad = [t for t in trials if t.params["training.warmup_steps"] > 0.1]
    assert bad and all(t.state.name == "FAIL" and "warmup_steps" in t.user_attrs["error"] for t in bad)
    assert all("run_id" not in t.user_attrs for t in bad) and len(executor.launches) == 6 - len(bad)
    assert len(trials) == 6


def test_a_pruned_trial_stops_through_the_executor_and_is_recorded_as_pruned(tmp_path: Path) -> None:
    space = SPACE.model_copy(update={"pruner": SPACE.pruner.model_copy(update={"type": "median", "startup_trials": 2})})
    executor = FakeExecutor(duration=6)
    loop, _ = make_loop(LocalStorage(tmp_path / "store"), tmp_path / "a", executor, budget=8, space=space)
    loop.run()
    pruned = [t for t in loop.study.get_trials() if t.state.name == "PRUNED"]
    assert pruned, "some trial below the median should have been pruned"
    for t in pruned:
        assert executor.stopped[t.user_attrs["run_id"]] < 6
        assert t.user_attrs["prune_requested_at"] == max(t.intermediate_values)
    assert len(loop.study.get_trials()) == 8


@pytest.mark.parametrize("die_after", [1, 2, 3, 5, 8, 12])
def test_a_parent_killed_anywhere_and_restarted_elsewhere_runs_each_trial_once(tmp_path: Path, die_after: int) -> None:
    store, executor = LocalStorage(tmp_path / "store"), FakeExecutor()
    loop, _ = make_loop(store, tmp_path / "machine-a", executor, die_after=die_after)
    with pytest.raises(Killed):
        loop.run()
    done = {t.number: t.value for t in loop.study.get_trials() if t.state.name == "COMPLETE"}

    restarted, _ = make_loop(store, tmp_path / "machine-b", executor)
    restarted.run()
    trials = restarted.study.get_trials()
    assert len(trials) == 8 and states(restarted) == ["COMPLETE"] * 8
    assert sorted(executor.polls) == [f"st-t{n:04d}" for n in range(8)], "one child per trial, none started twice"
    assert {n: trials[n].value for n in done} == done
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 8
    assert executor.peak <= 2


def test_trials_of_different_batch_sizes_report_at_equal_progress() -> None:
    from dialsum.tuning.loop import progress_points

    small = [{"step": 4 * k, "progress": k / 10, "dev_score": float(k)} for k in range(1, 6)]  # batch 8: 40 steps
    large = [{"step": k, "progress": k / 10, "dev_score": float(k)} for k in range(1, 6)]  # batch 32: 10 steps
    assert progress_points(small, "dev_score") == progress_points(large, "dev_score")
    assert [p for p, _ in progress_points(small, "dev_score")] == list(range(10, 55, 5))  # none before the first
    assert dict(progress_points(small, "dev_score"))[25] == 2.0  # the last value measured by then
    scored_at_epoch_ends = [
        {"step": 10, "progress": 0.5, "dev_loss": 1.0},
        {"step": 20, "progress": 1.0, "dev_loss": 0.9, "dev_score": 7.0},
    ]
    assert progress_points(scored_at_epoch_ends, "dev_score") == [(100, 7.0)]
    assert progress_points([{"step": 3, "dev_score": 1.0}], "dev_score") == [(3, 1.0)]  # an older curve: raw steps


def test_the_random_start_of_tpe_scales_with_the_budget() -> None:
    from dialsum.tuning.study import sampler, startup_trials

    assert [startup_trials(n) for n in (4, 8, 12, 16, 40)] == [3, 3, 4, 5, 13]
    assert sampler(0, 0, 16)._n_startup_trials == 5


class StoppableExecutor(FakeExecutor):
    """Children that end STOPPED once interrupted; launching an interrupted trial again starts a child that
    resumes it (here: from scratch)."""

    def __init__(self) -> None:
        super().__init__(duration=3)
        self.interrupted: set[str] = set()

    def interrupt(self, handle: str) -> bool:
        self.interrupted.add(handle)
        return True

    def status(self, handle: str) -> Status:
        if handle in self.interrupted:
            return Status(STOPPED, f"{handle}: stopped at step 1 of 3")
        return super().status(handle)

    def launch(self, run: TrialRun) -> str:
        if run.run_id in self.interrupted:
            self.interrupted.discard(run.run_id)
            self.polls[run.run_id] = 0
        return super().launch(run)


def test_a_stopped_parent_interrupts_its_trials_and_the_next_one_finishes_the_budget(tmp_path: Path) -> None:
    executor, store = StoppableExecutor(), LocalStorage(tmp_path / "store")
    loop, _ = make_loop(store, tmp_path / "a", executor, budget=4)
    asked = {"polls": 0}

    def stopping() -> bool:  # Ctrl-C once two trials run
        asked["polls"] += 1
        return len(loop.active) == 2

    loop.stopping = stopping
    loop.run()
    assert sorted(t["run_id"] for t in loop.stopped) == ["st-t0000", "st-t0001"]
    assert all("stopped at step 1" in t["where"] for t in loop.stopped)
    assert states(loop) == ["RUNNING", "RUNNING"]  # neither failed nor spent twice
    again, _ = make_loop(store, tmp_path / "b", executor, budget=4)
    again.run()
    assert states(again) == ["COMPLETE"] * 4
    assert sorted(executor.params) == [f"st-t{n:04d}" for n in range(4)]


def test_a_trial_that_ended_with_an_earlier_parent_resumes_as_the_same_trial(tmp_path: Path) -> None:
    class EndsWithParent(StoppableExecutor):
        def launch(self, run: TrialRun) -> str:
            first = run.run_id not in self.polls
            handle = super().launch(run)
            if first and run.run_id == "st-t0000":
                self.interrupted.add(handle)  # its process ended with the parent that started it
            return handle

    executor = EndsWithParent()
    loop, _ = make_loop(LocalStorage(tmp_path / "store"), tmp_path / "a", executor, budget=3)
    loop.run()
    assert states(loop) == ["COMPLETE"] * 3
    assert executor.launches.count("st-t0000") == 2 and len(executor.params) == 3
