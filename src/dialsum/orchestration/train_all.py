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

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings
from prefect.utilities.annotations import allow_failure

from dialsum import storage, tracking
from dialsum.data import source as datasource
from dialsum.errors import ConfigError
from dialsum.orchestration import placement
from dialsum.orchestration.nightly import (
    check_policy, decide_promotion, publish_summary, unchanged_models, unchanged_summary,
)
from dialsum.orchestration.train_model import (
    CRASH_RELAUNCHES, OrchestrationError, launch_model, outcome_row, pipeline_module, slug,
)
from dialsum.release import ensemble, registry, report


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
    run_id: str, models: list[str], storage_url: str | None, data_dir: str | None,
    sources: dict[str, str] | None = None, champion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ensemble the published models (and the reused ones, from `sources`), with the report PNG; publish it."""
    store = storage.open_storage(storage_url)
    data = Path(data_dir) if data_dir else None
    published = ensemble.publish_ensemble(run_id, store, models, data, sources, attachments=_plot_attachment(run_id, champion))
    create_markdown_artifact(published.report, key=slug(f"ensemble-{run_id}"), description=f"Ensemble of run {run_id}")
    result = published.result
    summary = {"choice": result.choice, "best_model": result.best_model, "dev_score": result.dev_score,
               "held_out_score": result.held_out_score, "strategies": result.strategies, "split": result.split,
               "scores": result.strategy_scores, "location": published.location, "model_scores": result.dev_scores,
               "dev_sha256": datasource.dev_fingerprint(data),
               "plot": store.share_url(storage.run_key(run_id, ensemble.ENSEMBLE, report.PLOT))}
    if result.scaling:
        summary["scaling_plot"] = store.share_url(storage.run_key(run_id, ensemble.ENSEMBLE, report.SCALING_PLOT))
    return {**summary, "headline": ensemble.headline(summary)}


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
        if result.scaling:
            report.plot_scaling(folder / report.SCALING_PLOT, result.scaling, f"train-all {run_id}")

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
    force: bool = False, gpus_per_model: int = 1, overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train every changed model (one child run each, all at once), ensemble those that succeeded, decide
    on promotion, then fail if any model did not succeed.

    `data_dir` is a folder or a storage URL. A model whose data, config and code hashes equal those of the
    champion's run (or its latest published run) is not retrained unless `force`; when no model changed the
    run reports "unchanged" and does nothing else. A child that crashes is launched again, up to
    `crash_relaunches` times, and resumes where it stopped. `gpus_per_model` > 1 trains each model
    data-parallel on that many GPUs of its placement. `promote`: never, if-better (the 95% lower bound of the
    paired dev-score gain over the champion above `margin`, see `registry`) or always. `overrides` (`KEY=VALUE`, as
    `dialsum train --set`) apply to every model.
    """
    check_models(models)
    check_policy(promote)
    tracking.check_report_folder()
    run_id = run_id or pipeline_module().new_run_id()
    local_data = datasource.resolve(data_dir)
    store = storage.open_storage(storage_url)
    base = registry.current(store)
    overrides = list(overrides or [])
    reused = {} if force else unchanged_models(models, local_data, debug, store, base, overrides)
    common = {"run_id": run_id, "data_dir": data_dir, "storage_url": storage_url, "debug": debug,
              "group": run_id, "eval_before": eval_before}
    if gpus_per_model > 1:
        common["gpus"] = gpus_per_model
    if overrides:  # only when given, so deployments registered before the parameter existed keep working
        common["overrides"] = overrides
    futures = [(p.model, launch_model.submit(p, {"model": p.model, **common}, embedded, crash_relaunches))
               for p in placement.assign([m for m in models if m not in reused], target, num_gpus, gpus_per_model)]
    rows = [reused[m] if m in reused else outcome_row(m, dict(futures)[m], overrides) for m in models]
    _report(run_id, rows)
    if not futures:
        return unchanged_summary(run_id, rows, base)
    done = [row["model"] for row in rows if row["status"] in ("completed", "unchanged")]
    failed = {row["model"]: row["error"] for row in rows if row["status"] == "failed"}
    result = decision = None
    if done:
        sources = {r["model"]: r["source_run"] for r in rows if r["status"] == "unchanged"}
        result = build_ensemble(run_id, done, storage_url, str(local_data) if local_data else None, sources,
                                base.champion if base else None, wait_for=[allow_failure(f) for _, f in futures])
        get_run_logger().info("ensemble (%s): %s", result["choice"], result["headline"])
        decision = decide_promotion(run_id, storage_url, promote, margin, local_data, failed, result["dev_score"])
    summary = {"run_id": run_id, "status": "trained", "rows": rows, "ensemble": result, "promotion": decision,
               "plot": result["plot"] if result else None}
    publish_summary(run_id, summary, base)
    if failed:
        raise ModelsFailed(failed, summary)
    return summary


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
