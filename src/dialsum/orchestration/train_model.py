"""The `train-model` flow (one model: train, score, publish) and how a parent launches it and reads it back.

A parent's `launch-model` task starts a `train-model` child run on the model's deployment, work queue and job
variables (`placement.assign`), or with `embedded=True` runs the child in this process as a subflow. Children
in one process take turns: they share torch's global RNG and thread pool. A child that ends Crashed (killed,
evicted, preempted) is launched again and resumes from its checkpoints. Its outcome is read back from object
storage (its manifest and metrics), never from Prefect results, so children may run on other machines.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from prefect import flow, get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Crashed, State

from dialsum import console, storage
from dialsum.config import ModelConfig, load_model_config
from dialsum.data import source as datasource
from dialsum.engine import lifeline
from dialsum.errors import ConfigError, DataError, DialsumError
from dialsum.orchestration import placement
from dialsum.orchestration.logs import send_to_prefect
from dialsum.pipeline.result import ModelRow
from dialsum.release import ensemble
from dialsum.settings import get_settings
from dialsum.state import stop

PERMANENT_ERRORS = (ConfigError, DataError, storage.LeaseHeld)
POLL_SECONDS = 2
CRASH_RELAUNCHES = 2
_IN_PROCESS = threading.Lock()
_IN_PROCESS_PLAN: dict[str, dict[str, Any]] = {}  # run id -> {"total": n, "started": [model, ...]}
lifeline.watch_parent()  # a local child imports this module first: from then on it ends with its parent


class OrchestrationError(DialsumError):
    """A train-all failure; its repr is its message, so Prefect's logs stay one line."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class ModelRunFailed(OrchestrationError):
    """A child run that did not complete, or completed without a verifiable published result."""

    def __init__(self, model: str, reason: str, seconds: float | None = None) -> None:
        super().__init__(model, reason, seconds)
        self.model, self.reason, self.seconds = model, reason, seconds

    def __str__(self) -> str:
        return f"{self.model}: {self.reason}"


def slug(text: str) -> str:
    """A Prefect artifact key: lowercase, each run of characters other than a-z and 0-9 becomes one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def pipeline_module() -> ModuleType:
    """`dialsum.pipeline`, imported when first needed: it loads torch, which a parent run never uses."""
    from dialsum import pipeline

    return pipeline


def resolve_profiles(models: Sequence[str], overrides: Sequence[str] | None = None) -> dict[str, ModelConfig | None]:
    """Each model's config with `overrides`, resolved once for a whole run; None for one that does not load (its
    own child then fails with the error, and the other models go on)."""
    profiles: dict[str, ModelConfig | None] = {}
    for model in models:
        try:
            profiles[model] = load_model_config(model, overrides or ())
        except DialsumError:
            profiles[model] = None
    return profiles


def profile_name(model: str, cfg: ModelConfig | None) -> str:
    """The name a model publishes under: its resolved config's, else (a config that does not load) the file stem."""
    return cfg.name if cfg is not None else Path(model).stem


def model_name(model: str, overrides: Sequence[str] | None = None) -> str:
    """The name a model config publishes under (its `name`, default the file stem); the stem if it does not load."""
    try:
        return load_model_config(model, overrides or ()).name
    except DialsumError:
        return Path(model).stem


# ---------------------------------------------------------------- the flow


def _skip_retries() -> None:
    """Set this flow run's retries to 0 so the failure about to be reported is final."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    policy = context.flow_run.empirical_policy.model_copy(update={"retries": 0})
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, empirical_policy=policy)


@flow(name="train-model", retries=1, retry_delay_seconds=10)
def train_model(
    model: str,
    run_id: str,
    data_dir: str | None = None,
    storage_url: str | None = None,
    debug: bool = False,
    group: str | None = None,
    eval_before: bool = False,
    gpus: int = 1,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train, score and publish one model (data-parallel when `gpus` > 1); config and data errors fail at once,
    other failures retry once. `overrides`: `KEY=VALUE` config overrides, as `dialsum train --set`. A run stopped
    by Ctrl-C ends Cancelled, saying where it stopped. Another process holding the run's lease is waited for until
    that lease would have expired (a crashed attempt's). A local child of sweep or K-fold ends with its parent
    process and stops on SIGTERM as on Ctrl-C (`lifeline`, `stop.as_child`)."""
    if lifeline.watch_parent():
        stop.as_child()
    send_to_prefect()
    try:
        options = {
            "run_id": run_id,
            "data_dir": datasource.resolve(data_dir),
            "debug": debug,
            "eval_before": eval_before,
            "storage_url": storage_url,
            "overrides": overrides or (),
        }
        if gpus > 1:
            result = pipeline_module().run_model_on_gpus(model, gpus, **options)
        else:
            lease_wait = get_settings().lease_seconds * 1.25
            result = pipeline_module().run_model(model, group=group, lease_wait=lease_wait, **options)
    except PERMANENT_ERRORS:
        _skip_retries()
        raise
    except stop.Preempted as exc:
        return _preempted(exc)
    except stop.Interrupted as exc:
        _skip_retries()
        return Cancelled(message=str(exc))
    return {
        "model": result.model,
        "dev_score": result.metrics["dev"]["score"],
        "location": result.location,
        "status": result.status,
    }


def _preempted(exc: stop.Preempted) -> State:
    """A child stopped by SIGTERM (its checkpoint published) ends Crashed, as if killed: train-all relaunches it."""
    _skip_retries()
    return Crashed(message=f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- launching children


def _run_on_worker(where: placement.Placement, parameters: dict[str, Any]) -> tuple[State, float | None]:
    """Run the child on its deployment and wait for it; returns its final state and run time."""
    child = run_deployment(
        where.deployment,
        parameters=parameters,
        job_variables=where.job_variables or None,
        work_queue_name=where.work_queue_name,
        as_subflow=True,
        poll_interval=POLL_SECONDS,
    )
    return child.state, child.total_run_time.total_seconds()


def plan_in_process(run_id: str, total: int) -> None:
    """A train-all run is about to run `total` children in this process (progress bars say "model k of n")."""
    _IN_PROCESS_PLAN[run_id] = {"total": total, "started": []}


def _run_in_process(parameters: dict[str, Any]) -> tuple[State, float]:
    """Run the child as a subflow of this process, one at a time; returns its final state and run time. After
    Ctrl-C, a child that has not started yet does not start."""
    with _IN_PROCESS:
        if stop.requested():
            return Cancelled(message=f"{model_name(parameters['model'])}: not started"), 0.0
        plan = _IN_PROCESS_PLAN.get(parameters["run_id"], {"total": 1, "started": []})
        if parameters["model"] not in plan["started"]:
            plan["started"].append(parameters["model"])
        started = time.monotonic()
        with (
            console.model_position(plan["started"].index(parameters["model"]) + 1, plan["total"])
            if plan["total"] > 1
            else nullcontext()
        ):
            state = train_model(**parameters, return_state=True)
        return state, time.monotonic() - started


def published_row(
    run_id: str,
    model: str,
    store: storage.Storage,
    seconds: float | None,
    overrides: Sequence[str] | None = None,
    name: str | None = None,
) -> ModelRow:
    """A table row for a child that completed, from what it published (`name`: the model's, when known)."""
    name = name or model_name(model, overrides)
    try:
        outputs = ensemble.read_outputs(run_id, name, store)
    except DialsumError as exc:
        raise ModelRunFailed(name, f"completed, but its published result is unusable: {exc}", seconds) from exc
    return ModelRow.published(name, outputs.metrics, outputs.location, _round(seconds))


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def run_child(
    where: placement.Placement, parameters: dict[str, Any], embedded: bool, relaunches: int, name: str | None = None
) -> tuple[State, float | None]:
    """Run one child; while it ends Crashed (killed, evicted, preempted), launch it again, up to `relaunches` times.

    Prefect never retries a Crashed run itself. A relaunched child has the same run id, so it resumes from its
    finished phases and newest checkpoint. Returns the last state and the run time of all attempts.
    """
    total: float | None = 0.0
    for attempt in range(relaunches + 1):
        state, seconds = _run_in_process(parameters) if embedded else _run_on_worker(where, parameters)
        total = None if total is None or seconds is None else total + seconds
        if not state.is_crashed() or attempt == relaunches or stop.requested():
            break
        get_run_logger().warning(
            "%s: child run crashed (%s); relaunching it (%d of %d) to resume from its newest checkpoint",
            name or model_name(where.model, parameters.get("overrides")),
            state.message,
            attempt + 1,
            relaunches,
        )
    return state, total


@task(name="launch-model", task_run_name="launch-{where.model}", cache_policy=NO_CACHE)
def launch_model(
    where: placement.Placement,
    parameters: dict[str, Any],
    embedded: bool,
    relaunches: int = CRASH_RELAUNCHES,
    name: str | None = None,
    store: storage.Storage | None = None,
) -> ModelRow:
    """Run one model's child and check it: a child that did not complete raises `ModelRunFailed`. `name` and
    `store`: the model's name and the storage, as the run resolved and opened them (else found here)."""
    name = name or model_name(where.model, parameters.get("overrides"))
    state, seconds = run_child(where, parameters, embedded, relaunches, name)
    if state.is_cancelled() and stop.requested():
        return stopped_row(name, state.message or "stopped", seconds)
    if not state.is_completed():
        raise ModelRunFailed(name, f"{state.name}: {state.message or 'no message'}", _round(seconds))
    store = store or storage.open_storage(parameters["storage_url"])
    row = published_row(parameters["run_id"], where.model, store, seconds, parameters.get("overrides"), name=name)
    return replace(row, status=_reported_status(state)) if embedded else row


def _reported_status(state: State) -> str:
    """What an in-process child reported: "completed", or "already complete" for a run published earlier."""
    result = state.result(raise_on_failure=False)
    return result.get("status", "completed") if isinstance(result, dict) else "completed"


def outcome_row(
    model: str, future: PrefectFuture, overrides: Sequence[str] | None = None, name: str | None = None
) -> ModelRow:
    """The launch task's row, or a `failed` row carrying the reason (`name`: the model's, when known)."""
    future.wait()
    if future.state.is_completed():
        return future.result()
    exc = future.result(raise_on_failure=False)
    if isinstance(exc, ModelRunFailed):
        return ModelRow.failed(exc.model, exc.reason, exc.seconds)
    return ModelRow.failed(name or model_name(model, overrides), f"{type(exc).__name__}: {exc}")


def stopped_row(name: str, message: str, seconds: float | None) -> ModelRow:
    """A table row for a child that Ctrl-C stopped (or kept from starting); `error` says where it stopped."""
    return ModelRow.stopped(name, message.removeprefix(f"{name}: "), _round(seconds))
