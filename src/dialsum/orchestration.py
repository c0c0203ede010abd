"""Prefect flows: `train-model` trains one model; `train-all` trains many, then builds the ensemble.

`train-all` submits one `launch-model` task per model at once. Each starts a `train-model` child run on
the model's deployment, work queue and job variables (`placement.assign`), or with `embedded=True` runs
the child in this process as a subflow. Children in one process take turns: they share torch's global
RNG and thread pool. A child's outcome is read back from object storage (its manifest and metrics),
never from Prefect results, so children may run on other machines. The `ensemble` task then combines
every model that succeeded; after it is published, the parent fails if any model failed, naming them.

Models whose data, config and code are unchanged since the champion's run (or their latest run) are not
retrained; their published results are reused. After the ensemble, the `promote` policy decides whether it
becomes the champion (`registry`).

Each train-all run leaves a table artifact `train-all-<run-id>` (one row per model), a markdown artifact
`ensemble-<run-id>` (the ensemble report) and `report-<run-id>` (challenger against champion, the promotion
decision, the plot). W&B runs of one train-all run share its run id as group; the report is one more run.
"""

from __future__ import annotations

import importlib
import re
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture
from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings
from prefect.states import Crashed, State
from prefect.utilities.annotations import allow_failure

from dialsum import datasource, ensemble, placement, registry, report, storage, tracking
from dialsum.checkpoint import Preempted
from dialsum.config import load_model_config
from dialsum.errors import ConfigError, DataError, DialsumError

PERMANENT_ERRORS = (ConfigError, DataError)
POLL_SECONDS = 2
CRASH_RELAUNCHES = 2
_IN_PROCESS = threading.Lock()


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


class ModelsFailed(OrchestrationError):
    """Some models of a train-all run failed; `summary` holds what the run produced anyway."""

    def __init__(self, failed: dict[str, str], summary: dict[str, Any]) -> None:
        super().__init__(failed, summary)
        self.failed, self.summary = failed, summary

    def __str__(self) -> str:
        total = len(self.summary["rows"])
        details = "; ".join(f"{m} ({reason})" for m, reason in self.failed.items())
        return f"{len(self.failed)} of {total} models failed: {details}"


def slug(text: str) -> str:
    """A Prefect artifact key: lowercase, each run of characters other than a-z and 0-9 becomes one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def _pipeline() -> ModuleType:
    """`dialsum.pipeline`, imported when first needed: it loads torch, which a parent run never uses."""
    return importlib.import_module("dialsum.pipeline")


def model_name(model: str) -> str:
    """The name a model config publishes under (its `name`, default the file stem); the stem if it does not load."""
    try:
        return load_model_config(model).name
    except DialsumError:
        return Path(model).stem


# ---------------------------------------------------------------- train-model


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
    model: str, run_id: str, data_dir: str | None = None, storage_url: str | None = None, debug: bool = False,
    group: str | None = None, eval_before: bool = False, gpus: int = 1,
) -> dict[str, Any]:
    """Train, score and publish one model (data-parallel when `gpus` > 1); config and data errors fail at once,
    other failures retry once."""
    try:
        if gpus > 1:
            result = _pipeline().run_model_on_gpus(
                model, gpus, run_id=run_id, data_dir=datasource.resolve(data_dir), debug=debug,
                eval_before=eval_before, storage_url=storage_url,
            )
        else:
            result = _pipeline().run_model(
                model, run_id=run_id, data_dir=datasource.resolve(data_dir), debug=debug,
                eval_before=eval_before, storage_url=storage_url, group=group,
            )
    except PERMANENT_ERRORS:
        _skip_retries()
        raise
    except Preempted as exc:
        return _preempted(exc)
    return {"model": result.model, "dev_score": result.metrics["dev"]["score"], "location": result.location}


def _preempted(exc: Preempted) -> State:
    """A child stopped by SIGTERM (its checkpoint published) ends Crashed, as if killed: train-all relaunches it."""
    _skip_retries()
    return Crashed(message=f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- train-all


def _run_on_worker(where: placement.Placement, parameters: dict[str, Any]) -> tuple[State, float | None]:
    """Run the child on its deployment and wait for it; returns its final state and run time."""
    child = run_deployment(
        where.deployment, parameters=parameters, job_variables=where.job_variables or None,
        work_queue_name=where.work_queue_name, as_subflow=True, poll_interval=POLL_SECONDS,
    )
    return child.state, child.total_run_time.total_seconds()


def _run_in_process(parameters: dict[str, Any]) -> tuple[State, float]:
    """Run the child as a subflow of this process, one at a time; returns its final state and run time."""
    with _IN_PROCESS:
        started = time.monotonic()
        state = train_model(**parameters, return_state=True)
        return state, time.monotonic() - started


def published_row(run_id: str, model: str, store: storage.Storage, seconds: float | None) -> dict[str, Any]:
    """A table row for a child that completed, from what it published."""
    name = model_name(model)
    try:
        outputs = ensemble.read_outputs(run_id, name, store)
    except DialsumError as exc:
        raise ModelRunFailed(name, f"completed, but its published result is unusable: {exc}", seconds) from exc
    metrics = outputs.metrics
    return {
        "model": name, "type": metrics.get("type"), "status": "completed",
        "dev_score_before": metrics.get("dev_score_before"), "dev_score": metrics["dev"]["score"],
        "seconds": _round(seconds), "location": outputs.location, "error": None,
    }


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def run_child(
    where: placement.Placement, parameters: dict[str, Any], embedded: bool, relaunches: int
) -> tuple[State, float | None]:
    """Run one child; while it ends Crashed (killed, evicted, preempted), launch it again, up to `relaunches` times.

    Prefect never retries a Crashed run itself. A relaunched child has the same run id, so it resumes from its
    finished phases and newest checkpoint. Returns the last state and the run time of all attempts.
    """
    total: float | None = 0.0
    for attempt in range(relaunches + 1):
        state, seconds = _run_in_process(parameters) if embedded else _run_on_worker(where, parameters)
        total = None if total is None or seconds is None else total + seconds
        if not state.is_crashed() or attempt == relaunches:
            break
        get_run_logger().warning("%s: child run crashed (%s); relaunching it (%d of %d) to resume from its newest "
                                 "checkpoint", model_name(where.model), state.message, attempt + 1, relaunches)
    return state, total


@task(name="launch-model", task_run_name="launch-{where.model}", cache_policy=NO_CACHE)
def launch_model(
    where: placement.Placement, parameters: dict[str, Any], embedded: bool, relaunches: int = CRASH_RELAUNCHES
) -> dict[str, Any]:
    """Run one model's child and check it: a child that did not complete raises `ModelRunFailed`."""
    state, seconds = run_child(where, parameters, embedded, relaunches)
    if not state.is_completed():
        raise ModelRunFailed(model_name(where.model), f"{state.name}: {state.message or 'no message'}", _round(seconds))
    return published_row(parameters["run_id"], where.model, storage.open_storage(parameters["storage_url"]), seconds)


def _outcome(model: str, future: PrefectFuture) -> dict[str, Any]:
    """The launch task's row, or a `failed` row carrying the reason."""
    future.wait()
    if future.state.is_completed():
        return future.result()
    exc = future.result(raise_on_failure=False)
    if isinstance(exc, ModelRunFailed):
        name, reason, seconds = exc.model, exc.reason, exc.seconds
    else:
        name, reason, seconds = model_name(model), f"{type(exc).__name__}: {exc}", None
    return {"model": name, "type": None, "status": "failed", "dev_score_before": None, "dev_score": None,
            "seconds": seconds, "location": None, "error": reason}


@task(name="ensemble", cache_policy=NO_CACHE)
def build_ensemble(
    run_id: str, models: list[str], storage_url: str | None, data_dir: str | None,
    sources: dict[str, str] | None = None, champion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ensemble the published models (and the reused ones, from `sources`), with the report PNG; publish it."""
    store = storage.open_storage(storage_url)
    data = Path(data_dir) if data_dir else None
    published = ensemble.publish_ensemble(run_id, store, models, data, sources, attachments=_plot_attachment(run_id, champion))
    create_markdown_artifact(published.report, key=slug(f"ensemble-{run_id}"), description=f"Ensemble of run {run_id}")
    result = published.result
    return {"choice": result.choice, "best_model": result.best_model, "dev_score": result.dev_score,
            "scores": result.strategy_scores, "location": published.location, "model_scores": result.dev_scores,
            "dev_sha256": datasource.dev_fingerprint(data),
            "plot": store.share_url(storage.run_key(run_id, ensemble.ENSEMBLE, report.PLOT))}


def _plot_attachment(run_id: str, champion: dict[str, Any] | None):
    """Writes report.png (loss curves, dev scores next to the champion's) into the ensemble folder."""
    def attach(folder: Path, result: ensemble.EnsembleResult, outputs: list[ensemble.ModelOutputs]) -> None:
        losses = {o.model: o.metrics.get("train_losses") or [] for o in outputs}
        scores = {**result.dev_scores, "ensemble": result.dev_score}
        theirs = None
        if champion:
            theirs = {**champion.get("member_scores", {}), "ensemble": champion["dev_score"]}
        who = f"champion {champion['run_id']}/{champion['model']}" if champion else "no champion yet"
        report.plot(folder / report.PLOT, losses, scores, theirs, f"train-all {run_id} ({who})")

    return attach


def _report(run_id: str, rows: list[dict[str, Any]]) -> None:
    """Log each model's outcome and attach the table artifact `train-all-<run-id>`."""
    logger = get_run_logger()
    for row in rows:
        outcome = f"failed: {row['error']}" if row["status"] == "failed" else f"dev score {row['dev_score']:.2f}"
        if row["status"] == "unchanged":
            outcome += f" (unchanged, from run {row['source_run']})"
        logger.info("%s: %s after %s s", row["model"], outcome, row["seconds"] if row["seconds"] is not None else "?")
    create_table_artifact(rows, key=slug(f"train-all-{run_id}"), description=f"Models of train-all run {run_id}")


def check_models(models: list[str]) -> None:
    """At least one model, each named once."""
    if not models:
        raise ConfigError("train-all needs at least one model")
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        raise ConfigError(f"models are listed more than once: {', '.join(repeated)}")


@flow(name="train-all")
def train_all(
    models: list[str], target: str = "process", num_gpus: int | None = None, data_dir: str | None = None,
    storage_url: str | None = None, debug: bool = False, run_id: str | None = None, eval_before: bool = False,
    embedded: bool = False, crash_relaunches: int = CRASH_RELAUNCHES, promote: str = "never", margin: float = 0.0,
    force: bool = False, gpus_per_model: int = 1,
) -> dict[str, Any]:
    """Train every changed model (one child run each, all at once), ensemble those that succeeded, decide
    on promotion, then fail if any model did not succeed.

    `data_dir` is a folder or a storage URL. A model whose data, config and code hashes equal those of the
    champion's run (or its latest published run) is not retrained unless `force`; when no model changed the
    run reports "unchanged" and does nothing else. A child that crashes is launched again, up to
    `crash_relaunches` times, and resumes where it stopped. `gpus_per_model` > 1 trains each model
    data-parallel on that many GPUs of its placement. `promote`: never, if-better (by at least `margin`
    dev score points, see `registry`) or always.
    """
    check_models(models)
    check_policy(promote)
    tracking.check_report_folder()
    run_id = run_id or _pipeline().new_run_id()
    local_data = datasource.resolve(data_dir)
    store = storage.open_storage(storage_url)
    base = registry.current(store)
    reused = {} if force else unchanged_models(models, local_data, debug, store, base)
    common = {"run_id": run_id, "data_dir": data_dir, "storage_url": storage_url, "debug": debug,
              "group": run_id, "eval_before": eval_before}
    if gpus_per_model > 1:
        common["gpus"] = gpus_per_model
    futures = [(p.model, launch_model.submit(p, {"model": p.model, **common}, embedded, crash_relaunches))
               for p in placement.assign([m for m in models if m not in reused], target, num_gpus, gpus_per_model)]
    rows = [reused[m] if m in reused else _outcome(m, dict(futures)[m]) for m in models]
    _report(run_id, rows)
    if not futures:
        return _unchanged(run_id, rows, base)
    done = [row["model"] for row in rows if row["status"] in ("completed", "unchanged")]
    failed = {row["model"]: row["error"] for row in rows if row["status"] == "failed"}
    result = decision = None
    if done:
        sources = {r["model"]: r["source_run"] for r in rows if r["status"] == "unchanged"}
        result = build_ensemble(run_id, done, storage_url, str(local_data) if local_data else None, sources,
                                base.champion if base else None, wait_for=[allow_failure(f) for _, f in futures])
        get_run_logger().info("ensemble (%s): dev score %.2f", result["choice"], result["dev_score"])
        decision = decide_promotion(run_id, storage_url, promote, margin, local_data, failed, result["dev_score"])
    summary = {"run_id": run_id, "status": "trained", "rows": rows, "ensemble": result, "promotion": decision,
               "plot": result["plot"] if result else None}
    publish_summary(run_id, summary, base)
    if failed:
        raise ModelsFailed(failed, summary)
    return summary


# ---------------------------------------------------------------- champion, unchanged runs, the report


def check_policy(policy: str) -> None:
    if policy not in registry.POLICIES:
        raise ConfigError(f"unknown promote policy {policy!r}; use one of {', '.join(registry.POLICIES)}")


def _fingerprints(model: str, data: Path | None, debug: bool) -> dict[str, Any] | None:
    """The hashes a published run of `model` must carry to be reused; None when the config does not load."""
    try:
        cfg = load_model_config(model)
    except DialsumError:
        return None
    return {"config_sha256": datasource.config_fingerprint(cfg), "data_sha256": datasource.data_fingerprint(data),
            "code_sha256": datasource.code_fingerprint(), "debug": debug}


def find_unchanged(model: str, data: Path | None, debug: bool, store: storage.Storage,
                   base: registry.Record | None) -> str | None:
    """The run id of a published run of `model` identical in data, config and code: the champion's, else the latest."""
    wanted = _fingerprints(model, data, debug)
    if wanted is None:
        return None
    name = model_name(model)
    champion = base.champion if base else {}
    runs = [champion.get("sources", {}).get(name, champion["run_id"])] if name in champion.get("members", []) else []
    runs += sorted((r.run_id for r in storage.list_runs(store) if r.model == name), reverse=True)
    for run in runs:
        manifest = storage.read_manifest(run, name, store)
        extra = (manifest or {}).get("extra", {})
        if manifest is not None and all(extra.get(k) == v for k, v in wanted.items()):
            return run
    return None


def unchanged_models(models: list[str], data: Path | None, debug: bool, store: storage.Storage,
                     base: registry.Record | None) -> dict[str, dict[str, Any]]:
    """model -> its table row, for the models that need no retraining."""
    rows = {}
    for model in models:
        run = find_unchanged(model, data, debug, store, base)
        if run is None:
            continue
        row = published_row(run, model, store, 0.0)
        rows[model] = {**row, "status": "unchanged", "source_run": run}
        get_run_logger().info("%s: unchanged since run %s; not retrained", row["model"], run)
    return rows


def _unchanged(run_id: str, rows: list[dict[str, Any]], base: registry.Record | None) -> dict[str, Any]:
    get_run_logger().info("unchanged: data, config and code match earlier runs; nothing was retrained")
    summary = {"run_id": run_id, "status": "unchanged", "rows": rows, "ensemble": None, "promotion": None, "plot": None}
    publish_summary(run_id, summary, base)
    return summary


@task(name="promote", cache_policy=NO_CACHE)
def decide_promotion(run_id: str, storage_url: str | None, policy: str, margin: float, data: Path | None,
                     failed: dict[str, str], score: float) -> dict[str, Any]:
    """Apply the promotion policy to this run's ensemble; a run with failed models is not promoted."""
    if policy == "never":
        return registry.Decision(False, "promotion policy is `never`", score).as_dict()
    store = storage.open_storage(storage_url)
    challenger = registry.describe(store, run_id, ensemble.ENSEMBLE)
    if failed:
        decision = registry.Decision(False, f"{len(failed)} model(s) failed ({', '.join(failed)}); "
                                            "a partial ensemble is not promoted", challenger["dev_score"])
    else:
        from dialsum.data import load_splits

        references = {ex.fname: ex.summary for ex in load_splits(data, splits=("dev",))["dev"]}
        decision = registry.promote(store, challenger, policy, margin, references)
    verdict = "promoted" if decision.promoted else "not promoted"
    get_run_logger().info("champion: %s: %s", verdict, decision.reason)
    return decision.as_dict()


def publish_summary(run_id: str, summary: dict[str, Any], base: registry.Record | None) -> str:
    """The markdown artifact `report-<run-id>` (challenger vs champion, decision, plot) and its W&B copy."""
    text = report.markdown(run_id, summary["rows"], summary["ensemble"], base.champion if base else None,
                           summary["promotion"], summary["plot"], summary["status"])
    create_markdown_artifact(text, key=slug(f"report-{run_id}"), description=f"Challenger vs champion, run {run_id}")
    tracking.publish_report(run_id, text, summary)
    return text


def run_embedded(models: list[str], **options: Any) -> dict[str, Any]:
    """Run `train_all` with every child in this process, without a Prefect server of its own.

    Runs report to `PREFECT_API_URL` when it is set, else to a temporary local Prefect API. Returns the
    flow's summary (`run_id`, `rows`, `ensemble`) also when some models failed; their rows say so.
    """
    options = {name: str(value) if isinstance(value, Path) else value for name, value in options.items()}
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: True}):
        try:
            return train_all(models, embedded=True, **options)
        except ModelsFailed as exc:
            return exc.summary
