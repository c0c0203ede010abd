"""The parent's study loop: ask → launch → watch (report the curve, prune) → tell, over a few slots.

The parent owns the study; children never sample. A trial's value is its score on the selection part of the one
dev split (`data.holdout`), so the held-out part stays unseen by the sweep; the pruner sees each curve at equal
progress (every 5% of the trial's planned training), not at raw step numbers, which differ with batch size.
Each trial is a child run (launched by an `Executor`: Prefect
deployments on GPU queues, local processes, or a stand-in) whose config overrides are the trial's parameters,
with its own run id `<study>-t<NNNN>`. The loop reads a running trial's evaluation curve from storage, reports it
to the trial and, when the pruner says so, asks the child to stop (it saves, publishes and completes: the trial
is recorded as pruned). A finished trial's value comes from what it published, never from the executor.

Bookkeeping lives in the study (trial user attributes), so a restarted parent picks up where the last one
stopped: trials still running are watched again by their handle (a flow-run id), a trial asked but never
launched is launched (launches are idempotent per trial), and the budget counts every trial, whatever its state.
A failed or crashed child makes a failed trial whose parameters are queued once more (if the budget has room); a
trial whose parameters do not configure the model fails at once, naming the key, and is not queued again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dialsum.errors import DialsumError
from dialsum.tuning.space import SearchSpace, to_overrides
from dialsum.tuning.study import sampler

log = logging.getLogger(__name__)

RUNNING, COMPLETED, FAILED, STOPPED = "running", "completed", "failed", "stopped"


@dataclass(frozen=True)
class TrialRun:
    """One trial's child run: its number, run id, parameters as overrides, and the slot it runs on."""

    number: int
    run_id: str
    params: dict[str, Any]
    slot: str

    @property
    def overrides(self) -> list[str]:
        return to_overrides(self.params)


@dataclass(frozen=True)
class Status:
    """Where a child run stands: running (scheduled, pending, retrying too), completed, failed, or stopped by the
    parent's stop request (Ctrl-C, SIGTERM: continued when the parent runs again); why; how long."""

    state: str
    message: str = ""
    seconds: float | None = None
    permanent: bool = False  # failed on its config or data: running it again would fail the same way


class Executor(Protocol):
    """Runs trials somewhere and reads what they publish."""

    slots: list[str]

    def launch(self, run: TrialRun) -> str:
        """Start the child (or find the one already started for this trial); returns its handle."""

    def status(self, handle: str) -> Status: ...

    def curve(self, run: TrialRun) -> list[dict[str, Any]]:
        """The evaluation curve the child has published so far."""

    def result(self, run: TrialRun) -> dict[str, Any]:
        """The child's published metrics.json; a DialsumError when it is missing or unusable."""

    def stop(self, run: TrialRun, reason: str) -> None:
        """Ask the child to stop at its next evaluation."""

    def interrupt(self, handle: str) -> bool:
        """Pass the parent's stop request on: the child publishes a checkpoint at its next step and ends; False
        when the child is left running (a deployment's: the next parent watches it again)."""


@dataclass
class Active:
    trial: Any
    run: TrialRun
    handle: str
    reported: set[int] = field(default_factory=set)
    stopping: bool = False


PROGRESS_GRID = 20  # a curve is reported to the pruner at every 5% of the planned training


def objective_value(objective: str, metrics: dict[str, Any]) -> float:
    """The study's value of a finished trial: its dev score on the selection part of the one dev split (never a
    held-out row), or the lowest dev loss of its curve (measured on selection rows too)."""
    if objective == "dev_score":
        value = (metrics.get("dev_selection") or {}).get("score")
        if value is None:
            raise DialsumError("its metrics hold no dev score on the selection rows (dev_selection)")
        return float(value)
    losses = [r["dev_loss"] for r in (metrics.get("training") or {}).get("curve", []) if r.get("dev_loss") is not None]
    if not losses:
        raise DialsumError("its metrics hold no dev loss")
    return float(min(losses))


def progress_points(curve: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """The curve's `key` at equal progress: at each 5% of the planned training that the curve has passed, the last
    value measured at or before it, as (percent, value). A curve without `progress` (an older run) keeps its raw
    steps. Trials that differ in batch size or epochs then report at the same points of their training."""
    points = [r for r in curve if r.get(key) is not None]
    if not any("progress" in r for r in curve):
        return [(int(r["step"]), float(r[key])) for r in points]
    reached = max((float(r.get("progress") or 0.0) for r in curve), default=0.0)
    out = []
    for k in range(1, PROGRESS_GRID + 1):
        at = k / PROGRESS_GRID
        if at > reached + 1e-9:
            break
        before = [r for r in points if float(r.get("progress") or 0.0) <= at + 1e-9]
        if before:
            out.append((round(100 * at), float(before[-1][key])))
    return out


class StudyLoop:
    """Runs a study to its budget of `budget` trials, at most `parallel` at once, one per free slot."""

    def __init__(
        self,
        study: Any,
        space: SearchSpace,
        executor: Executor,
        *,
        budget: int,
        parallel: int,
        seed: int,
        run_prefix: str,
        check: Callable[[dict[str, Any]], str | None] = lambda params: None,
        on_change: Callable[[], None] = lambda: None,
        poll_seconds: float = 2.0,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.study, self.space, self.executor = study, space, executor
        self.budget, self.parallel, self.seed, self.run_prefix = budget, max(1, parallel), seed, run_prefix
        self.check, self.on_change, self.poll_seconds = check, on_change, poll_seconds
        self.log = logger or log
        self.stopping = stopping
        self.stopped: list[dict[str, Any]] = []  # trials a stop request interrupted: number, run_id, where
        self.active: dict[int, Active] = {}
        self.unlaunched: list[Any] = []
        self.peak = 0

    # ------------------------------------------------------------ bookkeeping

    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def can_ask(self) -> bool:
        """Budget left: fewer trials than the budget (whatever their state), or requeued ones waiting."""
        from optuna.trial import TrialState

        trials = self.trials()
        return len(trials) < self.budget or any(t.state == TrialState.WAITING for t in trials)

    def _set(self, trial: Any, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.study._storage.set_trial_user_attr(trial._trial_id, key, value)

    def _free_slot(self, preferred: str | None = None) -> str | None:
        busy = {a.run.slot for a in self.active.values()}
        if preferred and preferred not in busy and preferred in self.executor.slots:
            return preferred
        return next((s for s in self.executor.slots if s not in busy), None)

    def _run_of(self, trial: Any, slot: str) -> TrialRun:
        return TrialRun(trial.number, f"{self.run_prefix}-t{trial.number:04d}", dict(trial.params), slot)

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        """Run the study to its budget; after a stop request (`stopping`), wind down instead (`stopped` says which
        trials were interrupted)."""
        self.reconcile()
        while True:
            if self.stopping():
                self.wind_down()
                return
            changed = self.poll()
            changed = self.fill() or changed
            if changed:
                self.on_change()
            if not self.active and not self.unlaunched and not self.can_ask():
                return
            time.sleep(self.poll_seconds)

    def wind_down(self) -> None:
        """Ask every running trial to stop and wait for them. An interrupted trial stays running in the study,
        without a handle: the next parent launches it again under its run id, and it resumes from its checkpoint;
        it is neither failed nor a second trial of the budget."""
        for number, active in list(self.active.items()):
            if not self.executor.interrupt(active.handle):
                del self.active[number]
                self.log.info("trial %d: left running on its worker; continuing the study watches it again", number)
        while self.active:
            for number, active in list(self.active.items()):
                status = self.executor.status(active.handle)
                if status.state == RUNNING:
                    continue
                del self.active[number]
                if status.state == COMPLETED:
                    self._finish(active, status)
                    continue
                where = status.message or "stopped"
                self._set(active.trial, handle=None, interrupted=where)
                self.stopped.append({"trial": number, "run_id": active.run.run_id, "where": where})
                self.log.info("trial %d: interrupted (%s); it continues when the study does", number, where)
            self.on_change()
            if self.active:
                time.sleep(min(self.poll_seconds, 0.5))

    def reconcile(self) -> None:
        """Pick up the trials a previous parent left running: watch launched ones, launch the others."""
        import optuna
        from optuna.trial import TrialState

        for frozen in self.trials():
            if frozen.state != TrialState.RUNNING:
                continue
            trial = optuna.Trial(self.study, frozen._trial_id)
            handle, slot = frozen.user_attrs.get("handle"), frozen.user_attrs.get("slot")
            if handle and slot:
                run = self._run_of(frozen, slot)
                self.active[frozen.number] = Active(
                    trial,
                    run,
                    handle,
                    set(frozen.intermediate_values),
                    bool(frozen.user_attrs.get("prune_requested_at")),
                )
                self.log.info("trial %d: still running (%s); watching it again", frozen.number, handle)
            else:
                self.unlaunched.append(trial)
        self.peak = len(self.active)

    def fill(self) -> bool:
        """Start trials on free slots while the budget allows; True when anything changed."""
        changed = False
        while len(self.active) < self.parallel and self._free_slot() is not None:
            if self.unlaunched:
                trial = self.unlaunched.pop(0)
            elif self.can_ask():
                trial = self._ask()
                changed = True
                if trial is None:
                    continue
            else:
                break
            self._launch(trial)
            changed = True
        return changed

    def _ask(self) -> Any | None:
        """A new trial with its parameters drawn, or None when it failed before launch (duplicate, bad config)."""
        from optuna.trial import TrialState

        self.study.sampler = sampler(self.seed, len(self.trials()), self.budget)
        trial = self.study.ask()
        params = self.space.suggest(trial)
        source = self.study._storage.get_trial(trial._trial_id).user_attrs.get("requeued_from")
        twin = next(
            (
                t.number
                for t in self.trials()
                if t.number not in (trial.number, source) and t.state != TrialState.WAITING and t.params == params
            ),
            None,
        )
        problem = f"same parameters as trial {twin}" if twin is not None else self.check(params)
        if problem is not None:
            self._set(trial, error=problem)
            self.study.tell(trial, state=TrialState.FAIL)
            self.log.warning("trial %d: %s; not run", trial.number, problem)
            return None
        return trial

    def _launch(self, trial: Any) -> None:
        frozen = self.study._storage.get_trial(trial._trial_id)
        slot = self._free_slot(frozen.user_attrs.get("slot"))
        run = self._run_of(frozen, slot)
        self._set(trial, run_id=run.run_id, slot=slot, overrides=run.overrides)
        self.on_change()  # the trial is on record before its child exists
        handle = self.executor.launch(run)
        self._set(trial, handle=handle)
        self.active[trial.number] = Active(trial, run, handle, set(frozen.intermediate_values))
        self.peak = max(self.peak, len(self.active))
        self.log.info("trial %d: launched on %s as %s (%s)", trial.number, slot, run.run_id, ", ".join(run.overrides))

    def poll(self) -> bool:
        """Look at every running trial once; True when any of them changed state or reported."""
        changed = False
        for number, active in list(self.active.items()):
            status = self.executor.status(active.handle)
            if status.state == RUNNING:
                changed = self._watch(active) or changed
                continue
            del self.active[number]
            changed = True
            if status.state == COMPLETED:
                self._finish(active, status)
            elif status.state == STOPPED:  # it ended with an earlier parent: the same trial resumes
                self._set(active.trial, handle=None, interrupted=status.message)
                self.unlaunched.append(active.trial)
                self.log.info("trial %d: stopped (%s); launching it again to resume", number, status.message)
            else:
                self._fail(active, status.message or "no message", status.seconds, requeue=not status.permanent)
        return changed

    def _watch(self, active: Active) -> bool:
        """Report the new points of a running trial's curve; ask it to stop when the pruner says so."""
        try:
            curve = self.executor.curve(active.run)
        except DialsumError as exc:
            self.log.warning("trial %d: cannot read its curve: %s", active.run.number, exc)
            return False
        points = [
            (step, value) for step, value in progress_points(curve, self.space.objective) if step not in active.reported
        ]
        for step, value in points:
            active.trial.report(value, step)
            active.reported.add(step)
        if points and any("progress" in r for r in curve):
            self._set(active.trial, progress=max(float(r.get("progress") or 0.0) for r in curve))
        if points and not active.stopping and active.trial.should_prune():
            step = points[-1][0]
            self.executor.stop(active.run, f"pruned by the sweep at step {step}")
            self._set(active.trial, prune_requested_at=step)
            active.stopping = True
            self.log.info(
                "trial %d: pruned at %d (%s %.4f); the child stops at its next evaluation",
                active.run.number,
                step,
                self.space.objective,
                points[-1][1],
            )
        return bool(points)

    def _finish(self, active: Active, status: Status) -> None:
        from optuna.trial import TrialState

        try:
            metrics = self.executor.result(active.run)
            value = objective_value(self.space.objective, metrics)
        except (DialsumError, KeyError, TypeError, ValueError) as exc:
            self._fail(active, f"completed, but its published result is unusable: {exc}", status.seconds)
            return
        training = metrics.get("training") or {}
        held = metrics.get("dev_held_out") or {}
        self._set(
            active.trial,
            seconds=status.seconds,
            dev_score=(metrics.get("dev") or {}).get("score"),
            selection_score=(metrics.get("dev_selection") or {}).get("score"),
            held_out_score=held.get("score"),
            split=held.get("split"),
            train_steps=metrics.get("train_steps"),
            location=metrics.get("location"),
        )
        if training.get("stop_requested"):
            self.study.tell(active.trial, state=TrialState.PRUNED)
            self.log.info("trial %d: pruned after %s steps", active.run.number, metrics.get("train_steps"))
        else:
            self.study.tell(active.trial, value)
            self.log.info("trial %d: %s %.4f", active.run.number, self.space.objective, value)

    def _fail(self, active: Active, reason: str, seconds: float | None, requeue: bool = True) -> None:
        """A failed trial; its parameters are queued once more unless it failed on its config or data, is itself a
        requeue, or the budget is spent."""
        from optuna.trial import TrialState

        number = active.run.number
        self._set(active.trial, error=reason, seconds=seconds)
        self.study.tell(active.trial, state=TrialState.FAIL)
        frozen = self.study._storage.get_trial(active.trial._trial_id)
        if not requeue:
            self.log.warning("trial %d failed on its config or data (%s); not queued again", number, reason)
        elif "requeued_from" in frozen.user_attrs:
            self.log.warning("trial %d failed (%s); its parameters were already queued once more", number, reason)
        elif len(self.trials()) >= self.budget:
            self.log.warning("trial %d failed (%s); no budget left to queue its parameters again", number, reason)
        else:
            self.study.enqueue_trial(dict(frozen.params), user_attrs={"requeued_from": number}, skip_if_exists=False)
            self.log.warning("trial %d failed (%s); its parameters are queued once more", number, reason)
