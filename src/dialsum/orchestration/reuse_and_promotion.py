"""What train-all decides around its models, on every run (nightly or not): which models are unchanged since an
earlier run (and are reused), whether the run's ensemble becomes the champion, and the run's report (markdown
artifact and W&B run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from dialsum import storage, tracking
from dialsum.config import ModelConfig
from dialsum.data import source as datasource
from dialsum.errors import ConfigError
from dialsum.orchestration.train_model import published_row, resolve_profiles, slug
from dialsum.pipeline.result import UNCHANGED, ModelRow, TrainAllSummary
from dialsum.release import ensemble, registry, report


def check_policy(policy: str) -> None:
    if policy not in registry.POLICIES:
        raise ConfigError(f"unknown promote policy {policy!r}; use one of {', '.join(registry.POLICIES)}")


def _fingerprints(cfg: ModelConfig, data: Path | None, debug: bool) -> dict[str, Any]:
    """The hashes a published run of the model `cfg` must carry to be reused."""
    return {
        "config_sha256": datasource.config_fingerprint(cfg),
        "data_sha256": datasource.data_fingerprint(data),
        "code_sha256": datasource.code_fingerprint(),
        "debug": debug,
    }


def find_unchanged(
    cfg: ModelConfig | None, data: Path | None, debug: bool, store: storage.Storage, base: registry.Record | None
) -> str | None:
    """The run id of a published run of the model `cfg` (None: its config does not load) identical in data, config
    and code: the champion's, else the latest."""
    if cfg is None:
        return None
    wanted, name = _fingerprints(cfg, data, debug), cfg.name
    champion = base.champion if base else {}
    runs = [champion.get("sources", {}).get(name, champion["run_id"])] if name in champion.get("members", []) else []
    runs += sorted((r.run_id for r in storage.list_runs(store) if r.model == name), reverse=True)
    for run in runs:
        manifest = storage.read_manifest(run, name, store)
        extra = (manifest or {}).get("extra", {})
        if manifest is not None and all(extra.get(k) == v for k, v in wanted.items()):
            return run
    return None


def unchanged_models(
    models: list[str],
    data: Path | None,
    debug: bool,
    store: storage.Storage,
    base: registry.Record | None,
    overrides: Sequence[str] = (),
    profiles: dict[str, ModelConfig | None] | None = None,
) -> dict[str, ModelRow]:
    """model -> its table row, for the models that need no retraining (config compared with `overrides` applied;
    `profiles`: the configs as the run resolved them, else each is resolved here)."""
    profiles = resolve_profiles(models, overrides) if profiles is None else profiles
    rows = {}
    for model in models:
        run = find_unchanged(profiles.get(model), data, debug, store, base)
        if run is None:
            continue
        row = published_row(run, model, store, 0.0, overrides, name=profiles[model].name)
        rows[model] = replace(row, status=UNCHANGED, source_run=run)
        get_run_logger().info("%s: unchanged since run %s; not retrained", row.model, run)
    return rows


def unchanged_summary(run_id: str, rows: list[ModelRow], base: registry.Record | None) -> TrainAllSummary:
    get_run_logger().info("unchanged: data, config and code match earlier runs; nothing was retrained")
    summary = TrainAllSummary(run_id, UNCHANGED, rows)
    publish_summary(summary, base)
    return summary


@task(name="promote", cache_policy=NO_CACHE)
def decide_promotion(
    run_id: str,
    storage_url: str | None,
    policy: str,
    margin: float,
    data: Path | None,
    failed: dict[str, str],
    score: float,
    store: storage.Storage | None = None,
) -> dict[str, Any]:
    """Apply the promotion policy to this run's ensemble; a run with failed models is not promoted."""
    if policy == "never":
        return registry.Decision(False, "promotion policy is `never`", score).as_dict()
    store = store or storage.open_storage(storage_url)
    challenger = registry.describe(store, run_id, ensemble.ENSEMBLE)
    if failed:
        decision = registry.Decision(
            False,
            f"{len(failed)} model(s) failed ({', '.join(failed)}); a partial ensemble is not promoted",
            challenger["dev_score"],
        )
    else:
        from dialsum.data import load_splits

        references = {ex.fname: ex.summary for ex in load_splits(data, splits=("dev",))["dev"]}
        decision = registry.promote(store, challenger, policy, margin, references, registry.NIGHTLY_CONFIDENCE)
    verdict = "promoted" if decision.promoted else "not promoted"
    get_run_logger().info("champion: %s: %s", verdict, decision.reason)
    return decision.as_dict()


def publish_summary(summary: TrainAllSummary, base: registry.Record | None) -> str:
    """The markdown artifact `report-<run-id>` (challenger vs champion, decision, plot) and its W&B copy."""
    run_id, serialized = summary.run_id, summary.to_dict()
    text = report.markdown(
        run_id,
        serialized["rows"],
        summary.ensemble,
        base.champion if base else None,
        summary.promotion,
        summary.plot,
        summary.status,
    )
    create_markdown_artifact(text, key=slug(f"report-{run_id}"), description=f"Challenger vs champion, run {run_id}")
    tracking.publish_report(run_id, text, serialized)
    return text
