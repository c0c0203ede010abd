"""Weights & Biases tracking: one run per model, grouped per invocation; offline without an API key."""

from __future__ import annotations

from pathlib import Path

from dialsum.settings import get_settings


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


def start_tracking(config: dict, name: str, group: str, directory: Path) -> Tracker:
    """Start a W&B run (mode from settings: online with a key, else offline; `disabled` turns it off).

    Only the experiment config is logged: settings, and so secrets, never are.
    """
    settings = get_settings()
    mode = settings.resolved_wandb_mode()
    if mode == "disabled":
        return Tracker()
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=settings.wandb_project, group=group, name=name, job_type="train", config=config,
        mode=mode, dir=str(directory), reinit="create_new",
    )
    return Tracker(run)


def publish_report(run_id: str, markdown: str, summary: dict) -> None:
    """One W&B run `train-all-<run-id>` in the run's group holding the train-all report: the markdown, the
    per-model table, the ensemble and promotion outcome as summary values (nothing when W&B is disabled)."""
    settings = get_settings()
    mode = settings.resolved_wandb_mode()
    if mode == "disabled":
        return
    import wandb

    directory = settings.output_dir / run_id / "wandb"
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=settings.wandb_project, group=run_id, name=f"train-all-{run_id}", job_type="report",
                     mode=mode, dir=str(directory), reinit="create_new")
    columns = ["model", "status", "dev_score", "seconds"]
    table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in summary["rows"]])
    run.log({"report": wandb.Html(f"<pre>{markdown}</pre>"), "models": table})
    promotion = summary.get("promotion") or {}
    run.summary.update({
        "status": summary["status"],
        "ensemble/dev_score": (summary.get("ensemble") or {}).get("dev_score"),
        "promotion/promoted": promotion.get("promoted"),
        "promotion/reason": promotion.get("reason"),
        "report_png": summary.get("plot"),
    })
    run.finish()
