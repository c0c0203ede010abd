"""Launching `train-model` children without waiting for them, for parents that keep several running (sweep, K-fold).

A launcher starts a child on a slot and returns a handle; `status(handle)` says whether it is still running.
Launches are idempotent per key (a trial's or fold's run id and attempt) within one storage: launching the same key
again finds the child already started, so a parent restarted between starting a child and recording it never starts
a second one. The key the Prefect server sees carries the storage's scope (`storage.storage_scope`): a server is
shared by every storage it trains into, and a child launched for another storage under the same run id is never
found, adopted or touched. The flow run keeps the plain key as its name.

* `DeploymentLauncher`: the child runs on a `train-model` deployment, on the queue and job variables of its slot
  (`placement.slots`: one GPU queue each on GPU targets); the handle is the flow-run id.
* `ProcessLauncher` (embedded): the child is a flow run of `train_model` in a local process of its own, on a slot
  that sets `CUDA_VISIBLE_DEVICES` when GPUs are given; the handle is `<flow-run id>@<pid>`. A process that died
  without reporting (SIGKILL, OOM) is marked Crashed. The child starts with SIGINT and SIGTERM blocked until it
  handles them itself (`stop.as_child`), and ends when this process is gone (`engine.lifeline`).

After Ctrl-C or SIGTERM (`stop.requested()`), a parent starts no child; `interrupt` passes the stop on to a
running local child (SIGTERM: it finishes its step, publishes a checkpoint and ends Cancelled), and a child that
ends other than Completed is `STOPPED`, not failed: running the parent again continues it. A child that ended
Cancelled, Crashed or Failed is never adopted by a later launch of the same key: that launch starts it again.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Protocol
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.deployments import run_deployment
from prefect.states import Crashed

from dialsum.engine import lifeline
from dialsum.orchestration import api, placement
from dialsum.orchestration.requests import OneModelFanOut
from dialsum.orchestration.train_model import PERMANENT_ERRORS
from dialsum.processes import alive
from dialsum.state import stop
from dialsum.tuning.loop import COMPLETED, FAILED, RUNNING, STOPPED, Status


class Launcher(Protocol):
    slots: list[str]

    def launch(self, key: str, parameters: dict[str, Any], slot: str, tags: list[str]) -> str: ...

    def status(self, handle: str) -> Status: ...

    def interrupt(self, handle: str) -> bool:
        """Pass a stop request on; True when the child stops by itself soon (else it is left running)."""


def _permanent(message: str) -> bool:
    """A child that failed on its config or data (its state message names the error class)."""
    names = {c.__name__ for base in PERMANENT_ERRORS for c in (base, *base.__subclasses__())}
    return any(f"{name}: " in message for name in names)


def _status_of(flow_run: Any) -> Status:
    state = flow_run.state
    if state is None or not state.is_final():
        return Status(RUNNING)
    seconds = flow_run.total_run_time.total_seconds() if flow_run.total_run_time else None
    if state.is_completed():
        return Status(COMPLETED, seconds=seconds)
    if stop.requested():  # stopped by the parent's stop request, or on its way there: continued on the next run
        return Status(STOPPED, state.message or state.name, seconds)
    message = f"{state.name}: {state.message or 'no message'}"
    return Status(FAILED, message, seconds, permanent=state.is_failed() and _permanent(message))


def scoped(key: str, scope: str) -> str:
    """The key a launch is found by: the child's key within one storage, and that storage's scope."""
    return f"{key}@{scope}"


def read_flow_run(flow_run_id: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id))


class DeploymentLauncher:
    """Children on `train-model` deployments, one slot per GPU queue (or `parallel` slots without queues)."""

    def __init__(self, places: dict[str, placement.Placement], scope: str) -> None:
        self.places, self.scope = places, scope
        self.slots = list(places)

    def launch(self, key: str, parameters: dict[str, Any], slot: str, tags: list[str]) -> str:
        where = self.places[slot]
        child = run_deployment(
            where.deployment,
            parameters=parameters,
            job_variables=where.job_variables or None,
            work_queue_name=where.work_queue_name,
            timeout=0,
            as_subflow=True,
            tags=tags,
            idempotency_key=scoped(key, self.scope),
            flow_run_name=key,
        )
        return str(child.id)

    def status(self, handle: str) -> Status:
        return _status_of(read_flow_run(handle))

    def interrupt(self, handle: str) -> bool:
        """A child on a deployment is left running on its worker: the next parent adopts it (same key)."""
        return False


class ProcessLauncher:
    """Children as `train_model` flow runs in local processes, reporting to this process's Prefect API."""

    def __init__(self, slots: list[str], gpus: bool, scope: str) -> None:
        self.slots, self.gpus, self.scope = list(slots), gpus, scope
        self.processes: dict[str, Any] = {}

    def _api_env(self) -> dict[str, str]:
        """The API every child reports to: the configured one, else this process's temporary local server; and
        this process's pid, which the child watches."""
        return {"PREFECT_API_URL": api.start(), **lifeline.child_env()}

    def _find(self, key: str) -> Any | None:
        """The child already started for `key`, unless it ended without completing (it is started again)."""
        with get_client(sync_client=True) as client:
            found = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run:{key}"])))
        return next(
            (run for run in found if run.state is None or not run.state.is_final() or run.state.is_completed()), None
        )

    def launch(self, key: str, parameters: dict[str, Any], slot: str, tags: list[str]) -> str:
        from prefect.flow_engine import run_flow_in_subprocess

        from dialsum.orchestration.train_model import train_model

        existing = self._find(scoped(key, self.scope))
        if existing is not None:
            return f"{existing.id}@"  # started by an earlier parent: its process is not known here
        env = self._api_env()
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = slot.rsplit("-", 1)[-1]
        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run(
                train_model, name=key, parameters=parameters, tags=[*tags, f"run:{scoped(key, self.scope)}"]
            )
        with stop.blocked(), lifeline.as_parent():  # the child handles signals once it runs (`stop.as_child`)
            process = run_flow_in_subprocess(train_model, flow_run=flow_run, parameters=parameters, env=env)
        self.processes[str(flow_run.id)] = process
        return f"{flow_run.id}@{process.pid}"

    def status(self, handle: str) -> Status:
        flow_run_id, _, pid = handle.partition("@")
        flow_run = read_flow_run(flow_run_id)
        status = _status_of(flow_run)
        if status.state != RUNNING:
            self._reap(flow_run_id)
            return status
        process = self.processes.get(flow_run_id)
        if process is not None:
            gone = process.exitcode is not None
        elif pid.isdigit():
            gone = not alive(int(pid))
        else:  # no process known: trust the API, unless the run never started (its launcher is gone)
            gone = flow_run.state is not None and flow_run.state.type.value in ("SCHEDULED", "PENDING")
        if not gone:
            return status
        flow_run = read_flow_run(flow_run_id)  # it may have reported its end just now
        if _status_of(flow_run).state != RUNNING:
            self._reap(flow_run_id)
            return _status_of(flow_run)
        code = process.exitcode if process is not None else "unknown"
        message = f"the child process exited with code {code} without reporting a final state"
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(flow_run_id), Crashed(message=message), force=True)
        self._reap(flow_run_id)
        if stop.requested() or process is None:  # stopped here, or ended with the parent that started it
            return Status(STOPPED, message)
        return Status(FAILED, f"Crashed: {message}")

    def interrupt(self, handle: str) -> bool:
        """Pass a stop request on to the child: it finishes its step, publishes a checkpoint and ends Cancelled.
        A child an earlier parent started (no process known here) is left running."""
        process = self.processes.get(handle.partition("@")[0])
        if process is None:
            return False
        if process.exitcode is None:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return True

    def _reap(self, flow_run_id: str) -> None:
        """Wait for a child that reported its end to exit; after a stop request, ending it if it lingers."""
        process = self.processes.pop(flow_run_id, None)
        if process is None:
            return
        process.join(timeout=3 if stop.requested() else 5)
        if process.exitcode is None and stop.requested():
            process.terminate()
            process.join(timeout=2)


def make_launcher(request: OneModelFanOut, scope: str) -> Launcher:
    """Embedded: local processes (one per GPU with `num_gpus`, else `parallel`); otherwise the target's deployment.
    `scope`: the scope of the storage the children publish to (`storage.storage_scope`)."""
    parallel, num_gpus = request.parallel, request.num_gpus
    if request.embedded:
        count = min(parallel, num_gpus) if num_gpus else parallel
        prefix = "gpu" if num_gpus else "slot"
        return ProcessLauncher([f"{prefix}-{i}" for i in range(count)], gpus=bool(num_gpus), scope=scope)
    return DeploymentLauncher(placement.slots(request.model, request.target, parallel, num_gpus), scope)


def run_all(
    launcher: Launcher,
    jobs: dict[str, dict[str, Any]],
    parallel: int,
    relaunches: int,
    tags: list[str],
    poll_seconds: float,
    logger: Any,
) -> dict[str, Status]:
    """Run every job (run id -> child parameters), at most `parallel` at once on free slots; a child that ends
    Crashed is launched again (same run id: it resumes) up to `relaunches` times. Returns each job's last status.
    After a stop request no job starts, the running ones are asked to stop and waited for; they are `STOPPED`."""
    import time

    pending, running, done = list(jobs), {}, {}
    attempts = dict.fromkeys(jobs, 0)
    interrupted = False
    while running or (pending and not stop.requested()):
        if stop.requested() and not interrupted:
            interrupted = True
            for run_id, (handle, _) in list(running.items()):
                if not launcher.interrupt(handle):
                    del running[run_id]
                    logger.info("%s: left running on its worker; running the parent again adopts it", run_id)
        free = [s for s in launcher.slots if s not in {slot for _, slot in running.values()}]
        while pending and free and len(running) < parallel and not stop.requested():
            run_id, slot = pending.pop(0), free.pop(0)
            key = f"{run_id}-a{attempts[run_id]}"
            running[run_id] = (launcher.launch(key, jobs[run_id], slot, [*tags, f"run-id:{run_id}"]), slot)
            logger.info("%s: launched on %s", run_id, slot)
        for run_id, (handle, _) in list(running.items()):
            status = launcher.status(handle)
            if status.state == RUNNING:
                continue
            del running[run_id]
            if status.state == FAILED and status.message.startswith("Crashed") and attempts[run_id] < relaunches:
                attempts[run_id] += 1
                pending.insert(0, run_id)
                logger.warning(
                    "%s: %s; relaunching it (%d of %d) to resume", run_id, status.message, attempts[run_id], relaunches
                )
                continue
            done[run_id] = status
            logger.info("%s: %s", run_id, status.state if status.state == COMPLETED else status.message)
        if running or (pending and not stop.requested()):
            time.sleep(min(poll_seconds, 0.5) if stop.requested() else poll_seconds)
    return done
