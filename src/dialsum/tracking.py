"""Weights & Biases tracking: one run per model, grouped per invocation; offline without an API key."""

from __future__ import annotations

import os
from pathlib import Path

from dialsum.settings import get_settings, writable_dir


class Tracker:
    """A thin wrapper so the pipeline never checks whether W&B is on."""

    def __init__(self, run=None):
        self.run = run

    def log(self, data: dict) -> None:
        if self.run is not None:
            self.run.log(data)

    def finish(self, summary: dict | None = None, failed: bool = False) -> None:
        if self.run is None:
            return
        if summary:
            self.run.summary.update(summary)
        self.run.finish(exit_code=1 if failed else 0)


def _import_wandb():
    """`wandb`, with blank WANDB_* variables removed first: docker compose passes an `.env` entry left empty
    (WANDB_MODE=) as an empty string, which W&B rejects; blank means unset, as in `Settings`."""
    for name in [k for k, v in os.environ.items() if k.startswith("WANDB_") and not v.strip()]:
        del os.environ[name]
    import wandb

    return wandb


def start_tracking(config: dict, name: str, group: str, directory: Path) -> Tracker:
    """Start a W&B run (mode from settings: online with a key, else offline; `disabled` turns it off).

    Only the experiment config is logged: settings, and so secrets, never are.
    """
    settings = get_settings()
    mode = settings.resolved_wandb_mode()
    if mode == "disabled":
        return Tracker()
    wandb = _import_wandb()
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=settings.wandb_project,
        group=group,
        name=name,
        job_type="train",
        config=config,
        mode=mode,
        dir=str(directory),
        reinit="create_new",
    )
    return Tracker(run)


def check_report_folder() -> None:
    """Before train-all launches anything: its W&B report run will need a writable output folder (a
    `FolderError` naming it now, not a failed run after hours of training). Nothing to check when disabled."""
    settings = get_settings()
    if settings.resolved_wandb_mode() != "disabled":
        writable_dir(settings.output_dir, "output")


def publish_report(run_id: str, markdown: str, summary: dict) -> None:
    """One W&B run `train-all-<run-id>` in the run's group holding the train-all report: the markdown, the
    per-model table, the ensemble and promotion outcome as summary values (nothing when W&B is disabled)."""
    settings = get_settings()
    mode = settings.resolved_wandb_mode()
    if mode == "disabled":
        return
    wandb = _import_wandb()
    directory = settings.output_dir / run_id / "wandb"
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=settings.wandb_project,
        group=run_id,
        name=f"train-all-{run_id}",
        job_type="report",
        mode=mode,
        dir=str(directory),
        reinit="create_new",
    )
    columns = ["model", "status", "dev_score", "seconds"]
    table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in summary["rows"]])
    run.log({"report": wandb.Html(f"<pre>{markdown}</pre>"), "models": table})
    promotion = summary.get("promotion") or {}
    run.summary.update(
        {
            "status": summary["status"],
            "ensemble/dev_score": (summary.get("ensemble") or {}).get("dev_score"),
            "ensemble/held_out_score": (summary.get("ensemble") or {}).get("held_out_score"),
            "promotion/promoted": promotion.get("promoted"),
            "promotion/difference": (promotion.get("comparison") or {}).get("mean"),
            "promotion/difference_low": (promotion.get("comparison") or {}).get("low"),
            "promotion/difference_high": (promotion.get("comparison") or {}).get("high"),
            "promotion/reason": promotion.get("reason"),
            "report_png": summary.get("plot"),
        }
    )
    run.finish()
