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

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, State
from prefect.utilities.annotations import allow_failure
from prefect.utilities.hashing import file_hash
from pydantic import Field

from dialsum import storage, tracking
from dialsum.config import check_listed_once
from dialsum.data import source as datasource
from dialsum.errors import ConfigError, DialsumError
from dialsum.orchestration import api, placement
from dialsum.orchestration.logs import send_to_prefect
from dialsum.orchestration.requests import FanOutRequest, flat_parameters
from dialsum.orchestration.reuse_and_promotion import (
    check_policy,
    decide_promotion,
    publish_summary,
    unchanged_models,
    unchanged_summary,
)
from dialsum.orchestration.train_model import (
    CRASH_RELAUNCHES,
    OrchestrationError,
    launch_model,
    outcome_row,
    plan_in_process,
    profile_name,
    resolve_profiles,
    slug,
)
from dialsum.pipeline.result import (
    FAILED,
    STOPPED,
    UNCHANGED,
    ModelRow,
    TrainAllSummary,
)
from dialsum.release import ensemble, registry, report
from dialsum.state import stop


class ModelsFailed(OrchestrationError):
    """Some models of a train-all run failed; `summary` holds what the run produced anyway."""

    def __init__(self, failed: dict[str, str], summary: dict[str, Any]) -> None:
        super().__init__(failed, summary)
        self.failed, self.summary = failed, summary

    def __str__(self) -> str:
        total = len(self.summary["rows"])
        details = "; ".join(f"{m} ({reason})" for m, reason in self.failed.items())
        return f"{len(self.failed)} of {total} models failed: {details}"


@task(name="ensemble", cache_policy=NO_CACHE)
def build_ensemble(
    run_id: str,
    models: list[str],
    storage_url: str | None,
    data_dir: str | None,
    sources: dict[str, str] | None = None,
    champion: dict[str, Any] | None = None,
    store: storage.Storage | None = None,
) -> dict[str, Any]:
    """Ensemble the published models (and the reused ones, from `sources`), with the report PNG; publish it (to
    `store` when the run has it open, else to `storage_url`)."""
    store = store or storage.open_storage(storage_url)
    data = Path(data_dir) if data_dir else None
    published = ensemble.publish_ensemble(
        run_id, store, models, data, sources, attachments=_plot_attachment(run_id, champion, store)
    )
    create_markdown_artifact(published.report, key=slug(f"ensemble-{run_id}"), description=f"Ensemble of run {run_id}")
    facts = {**published.result.summary(), "dev_sha256": datasource.dev_fingerprint(data)}
    return ensemble.summary_of(run_id, store, facts, published.location).as_dict()


def _plot_attachment(run_id: str, champion: dict[str, Any] | None, store: storage.Storage | None = None):
    """Writes report.png (loss curves, dev scores with intervals next to the champion's) into the ensemble folder,
    and with candidates n_scaling.png, each model in the same colour in both."""

    def attach(folder: Path, result: ensemble.EnsembleResult, outputs: list[ensemble.ModelOutputs]) -> None:
        losses = {o.model: o.metrics.get("train_losses") or [] for o in outputs}
        scores = {**result.dev_scores, "ensemble": result.dev_score}
        rows = {o.model: list((o.metrics.get("dev_row_scores") or {}).values()) for o in outputs}
        intervals = report.intervals_of({**rows, "ensemble": list(result.row_scores.values())})
        theirs = theirs_intervals = None
        if champion:
            theirs = {**champion.get("member_scores", {}), "ensemble": champion["dev_score"]}
            theirs_intervals = _champion_intervals(champion, store) if store is not None else {}
        who = f"champion {champion['run_id']}/{champion['model']}" if champion else "no champion yet"
        colors = report.model_colors([o.model for o in outputs])
        report.plot(
            folder / report.PLOT,
            losses,
            scores,
            theirs,
            f"train-all {run_id} ({who})",
            intervals,
            theirs_intervals,
            colors=colors,
        )
        if result.scaling:
            report.plot_scaling(folder / report.SCALING_PLOT, result.scaling, f"train-all {run_id}", colors=colors)

    return attach


def _champion_intervals(champion: dict[str, Any], store: storage.Storage) -> dict[str, tuple[float, float]]:
    """The champion's per-row dev scores as it published them, as 95% intervals (none for what it did not publish)."""
    sources = champion.get("sources") or {}
    entries = {
        "ensemble": {"run_id": champion["run_id"], "model": champion["model"]},
        **{m: {"run_id": sources.get(m, champion["run_id"]), "model": m} for m in champion.get("members", [])},
    }
    rows = {}
    for name, entry in entries.items():
        try:
            published, _ = registry.published_rows(store, entry)
        except DialsumError:
            continue
        if published:
            rows[name] = list(published.values())
    return report.intervals_of(rows)


def _report(run_id: str, rows: list[ModelRow]) -> None:
    """Log each model's outcome and attach the table artifact `train-all-<run-id>`."""
    logger = get_run_logger()
    for row in rows:
        outcome = f"{row.status}: {row.error}" if row.status in (FAILED, STOPPED) else f"dev score {row.dev_score:.2f}"
        if row.status == UNCHANGED:
            outcome += f" (unchanged, from run {row.source_run})"
        logger.info("%s: %s after %s s", row.model, outcome, row.seconds if row.seconds is not None else "?")
    create_table_artifact(
        [row.to_dict() for row in rows],
        key=slug(f"train-all-{run_id}"),
        description=f"Models of train-all run {run_id}",
    )


def check_models(models: list[str]) -> None:
    """At least one model, each named once."""
    if not models:
        raise ConfigError("train-all needs at least one model")
    check_listed_once(models)


class TrainAllRequest(FanOutRequest):
    """One train-all run, as its flow parameters ask for it, handed to every step of the run."""

    models: list[str] = Field(description="config stems in configs/models/ or YAML paths, each once")
    run_id: str = Field(
        default_factory=storage.new_run_id, description="the run's id (default: a new one); children publish under it"
    )
    eval_before: bool = Field(False, description="also score each untrained model on dev")
    crash_relaunches: int = Field(CRASH_RELAUNCHES, description="relaunches of a child that ends Crashed")
    promote: str = Field("never", description="never, if-better or always")
    margin: float = Field(0.0, description="if-better: the 99% lower bound of the gain must be above this")
    force: bool = Field(False, description="retrain also when data, config and code are unchanged")
    gpus_per_model: int = Field(1, description="train each model data-parallel on this many GPUs")
    resume: bool = Field(False, description="continue the run `run_id`, reusing nothing from other runs")


@flow(name="train-all", version=file_hash(__file__))  # not the hash of requests.py
@flat_parameters(TrainAllRequest)
def train_all(request: TrainAllRequest) -> dict[str, Any] | State:
    """Train every changed model (one child run each, all at once), ensemble those that succeeded, decide
    on promotion, then fail if any model did not succeed.

    `data_dir` is a folder or a storage URL. A model whose data, config and code hashes equal those of the
    champion's run (or its latest published run) is not retrained unless `force`; when no model changed the
    run reports "unchanged" and does nothing else. A child that crashes is launched again, up to
    `crash_relaunches` times, and resumes where it stopped. `gpus_per_model` > 1 trains each model
    data-parallel on that many GPUs of its placement. `promote`: never, if-better (the 99% lower bound, the
    nightly level, of the paired dev-score gain over the champion above `margin`, see `registry`) or always.
    `overrides` (`KEY=VALUE`, as `dialsum train --set`) apply to every model.

    `resume` continues the run `run_id`: no model is reused from other runs; each child finds its model
    already complete (published) or continues it from its finished phases and checkpoints. After Ctrl-C
    (embedded), children stop at their next safe point, none starts, and the run ends Cancelled with one row
    per model saying where it stopped, without ensemble.
    """
    stop.reclaim()  # embedded: SIGTERM stops the run as Ctrl-C does, not Prefect's engine at once
    check_models(request.models)
    check_policy(request.promote)
    tracking.check_report_folder()
    send_to_prefect()
    stop.continue_with(f"--resume {request.run_id}")
    summary = run_request(request)
    if isinstance(summary, State):
        return summary
    if summary.failed:
        raise ModelsFailed(summary.failed, summary.to_dict())
    return summary.to_dict()


def run_request(request: TrainAllRequest) -> TrainAllSummary | State:
    """The run's summary once its children ended (and, unless stopped or unchanged, its ensemble and promotion)."""
    run_id, local_data = request.run_id, datasource.resolve(request.data_dir)
    store = storage.open_storage(request.storage_url)
    base = registry.current(store)
    profiles = resolve_profiles(request.models, request.overrides)  # once, for every step of the run
    names = {m: profile_name(m, cfg) for m, cfg in profiles.items()}
    reused = (
        {}
        if request.force or request.resume
        else unchanged_models(request.models, local_data, request.debug, store, base, request.overrides, profiles)
    )
    futures = launch_children(request, [m for m in request.models if m not in reused], profiles, store)
    rows = [
        reused[m] if m in reused else outcome_row(m, futures[m], request.overrides, names[m]) for m in request.models
    ]
    _report(run_id, rows)
    if not futures:
        return unchanged_summary(run_id, rows, base)
    if stop.requested():
        return stopped_summary(run_id, rows, store)
    if (
        request.resume
        and all(r.status == "already complete" for r in rows)
        and (done := published_ensemble(run_id, store))
    ):
        get_run_logger().info("run %s is already complete: its models and ensemble are published", run_id)
        return TrainAllSummary(run_id, "already complete", rows, done)
    summary = ensemble_and_promote(request, rows, list(futures.values()), store, local_data, base)
    publish_summary(summary, base)
    return summary


def launch_children(
    request: TrainAllRequest, models: list[str], profiles: dict[str, Any], store: storage.Storage
) -> dict[str, PrefectFuture]:
    """model -> its `launch-model` task, for the models to train, all submitted at once (`profiles`: their configs
    as the run resolved them)."""
    if request.embedded:
        plan_in_process(request.run_id, len(models))
    common = child_parameters(request)
    placed = placement.assign_by_family(
        models, request.target, request.num_gpus, request.gpus_per_model, request.overrides, profiles
    )
    return {
        p.model: launch_model.submit(
            p,
            {"model": p.model, **common},
            request.embedded,
            request.crash_relaunches,
            name=profile_name(p.model, profiles[p.model]),
            store=store,
        )
        for p in placed
    }


def child_parameters(request: TrainAllRequest) -> dict[str, Any]:
    """The parameters every child of a run shares (besides its model)."""
    common = {
        "run_id": request.run_id,
        "data_dir": request.data_dir,
        "storage_url": request.storage_url,
        "debug": request.debug,
        "group": request.run_id,
        "eval_before": request.eval_before,
    }
    if request.gpus_per_model > 1:
        common["gpus"] = request.gpus_per_model
    if request.overrides:  # only when given, so deployments registered before the parameter existed keep working
        common["overrides"] = request.overrides
    return common


def ensemble_and_promote(
    request: TrainAllRequest,
    rows: list[ModelRow],
    futures: list,
    store: storage.Storage,
    local_data: Path | None,
    base: registry.Record | None,
) -> TrainAllSummary:
    """The ensemble of the models that succeeded (once every child has ended) and the promotion decision; the
    run's summary."""
    run_id = request.run_id
    summary = TrainAllSummary(run_id, "trained", rows)
    done = [row.model for row in rows if row.succeeded]
    if not done:
        return summary
    sources = {r.model: r.source_run for r in rows if r.status == UNCHANGED}
    result = build_ensemble(
        run_id,
        done,
        request.storage_url,
        str(local_data) if local_data else None,
        sources,
        base.champion if base else None,
        wait_for=[allow_failure(f) for f in futures],
        store=store,
    )
    get_run_logger().info("ensemble (%s): %s", result["choice"], result["headline"])
    decision = decide_promotion(
        run_id,
        request.storage_url,
        request.promote,
        request.margin,
        local_data,
        summary.failed,
        result["dev_score"],
        store=store,
    )
    return replace(summary, ensemble=result, promotion=decision)


def published_ensemble(run_id: str, store: storage.Storage) -> dict[str, Any] | None:
    """The run's ensemble as `build_ensemble` reports it, read back from storage; None when not published."""
    published = ensemble.published_summary(run_id, store)
    return None if published is None else published.as_dict()


def stopped_summary(run_id: str, rows: list[ModelRow], store: storage.Storage) -> State:
    """After Ctrl-C or SIGTERM: no ensemble, no promotion; the run ends Cancelled, its summary holding a row per
    model and whether anything was kept that `--resume` continues (`resumable`)."""
    from dialsum.state import runs

    resumable = any(runs.has_progress(run_id, row.model, store) for row in rows)
    summary = TrainAllSummary(run_id, STOPPED, rows, resumable=resumable)
    stopped = [row.model for row in rows if row.status == STOPPED]
    return Cancelled(
        message=f"stopped by {stop.cause()}: {', '.join(stopped) or 'no model'} stopped; running the "
        "same run id again continues",
        data=summary.to_dict(),
    )


def run_embedded(models: list[str], **options: Any) -> dict[str, Any]:
    """Run `train_all` with every child in this process, without a Prefect server of its own.

    Runs report to `PREFECT_API_URL` when it is set, else to a temporary local Prefect API, started here with
    SIGINT blocked (`api`): Ctrl-C at a terminal reaches every process of its group, and the children must still
    report while they stop. Returns the flow's summary (`run_id`, `rows`, `ensemble`, `status`) also when some
    models failed or the run was stopped; their rows say so.
    """
    with api.embedded(options) as options:
        try:
            state = train_all(models, embedded=True, return_state=True, **options)
        except ModelsFailed as exc:
            return exc.summary
    return summary_of(state)


def summary_of(state: State) -> dict[str, Any]:
    """The summary a finished train-all run carries: completed, failed models, or stopped by Ctrl-C."""
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, ModelsFailed):
        return outcome.summary
    if isinstance(outcome, BaseException):
        raise outcome
    if isinstance(outcome, dict):
        return outcome
    raise OrchestrationError(f"train-all ended {state.name}: {state.message}")
