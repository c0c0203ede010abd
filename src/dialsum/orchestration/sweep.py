"""The `sweep` flow: an Optuna study over one model's config, each trial a `train-model` child run.

The parent owns the study (`tuning.study`: a journal file snapshotted to `sweeps/<study>/` after every change)
and runs the loop of `tuning.loop`: ask (TPE with the constant liar, seeded per trial), launch the child on a free
slot (one GPU queue per trial on GPU targets; local processes when embedded), watch its published evaluation
curve and prune it through a STOP marker, tell the result read back from storage. A restarted parent (any
machine that sees the storage and the Prefect API) continues the same study: nothing runs twice and the budget
counts every trial. A study name is unique only inside its storage: a sweep of the same name in another storage is
another study, and neither adopts the other's children. The sweep ends Completed, with `trials.csv`, `best.yaml`,
the history and importance plots and a table artifact `sweep-<study>` that says which trials failed and why. Trials
share the study as W&B group. After Ctrl-C or SIGTERM no trial starts, running ones stop at their next step with a
checkpoint, and the study keeps them running without a handle: continuing it resumes them, within the same budget.
"""

from __future__ import annotations

import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.utilities.hashing import file_hash
from pydantic import Field

from dialsum import storage
from dialsum.errors import ConfigError
from dialsum.orchestration import api
from dialsum.orchestration.children import Launcher, make_launcher
from dialsum.orchestration.requests import OneModelFanOut, flat_parameters
from dialsum.orchestration.train_model import model_name, slug
from dialsum.settings import get_settings
from dialsum.state import stop
from dialsum.tuning import outputs
from dialsum.tuning.loop import StudyLoop, TrialRun
from dialsum.tuning.space import check_trial, load_space
from dialsum.tuning.study import StudyJournal, check_study_name, study_key

OUTPUT_FILES = ("trials.csv", "best.yaml", "history.png", "importance.png")


def new_study_name(model: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{model_name(model)[:24]}-{stamp}-{secrets.token_hex(2)}"


class TrialExecutor:
    """The study loop's executor: a launcher for the children, storage for their curves, results and stop markers."""

    def __init__(
        self,
        launcher: Launcher,
        store: storage.Storage,
        model: str,
        name: str,
        study: str,
        common: dict[str, Any],
        base: list[str],
    ) -> None:
        self.launcher, self.store, self.model, self.name, self.study = launcher, store, model, name, study
        self.common, self.base = common, base
        self.slots = launcher.slots

    def launch(self, run: TrialRun) -> str:
        parameters = {
            "model": self.model,
            "run_id": run.run_id,
            **self.common,
            "overrides": [*self.base, *run.overrides],
        }
        return self.launcher.launch(run.run_id, parameters, run.slot, [f"sweep:{self.study}", f"trial:{run.number}"])

    def status(self, handle: str):
        return self.launcher.status(handle)

    def curve(self, run: TrialRun) -> list[dict[str, Any]]:
        return storage.read_progress(run.run_id, self.name, self.store)

    def result(self, run: TrialRun) -> dict[str, Any]:
        import json

        metrics = json.loads(storage.read_published(run.run_id, self.name, "metrics.json", self.store))
        return {**metrics, "location": self.store.location(storage.run_key(run.run_id, self.name))}

    def stop(self, run: TrialRun, reason: str) -> None:
        storage.request_stop(run.run_id, self.name, self.store, reason)

    def interrupt(self, handle: str) -> bool:
        return self.launcher.interrupt(handle)


def publish_outputs(
    journal: StudyJournal, study: Any, space, profile: str, base: list[str], debug: bool = False
) -> dict[str, Any]:
    """Write the sweep's outputs for the model published as `profile` and upload them to `sweeps/<study>/`."""
    with tempfile.TemporaryDirectory(prefix="dialsum-sweep-") as tmp:
        facts = outputs.write_outputs(Path(tmp), study, space, profile, base, debug)
        for name in OUTPUT_FILES:
            if (Path(tmp) / name).is_file():
                journal.store.write_bytes(study_key(journal.name, name), (Path(tmp) / name).read_bytes())
    return facts


def _report(study_name: str, rows: list[dict[str, Any]], params: list[str]) -> None:
    logger = get_run_logger()
    for row in rows:
        if row["state"] == "failed":
            logger.warning("trial %s failed: %s", row["trial"], row["error"])
    create_table_artifact(rows, key=slug(f"sweep-{study_name}"), description=f"Trials of sweep {study_name}")
    logger.info("sweep %s:\n%s", study_name, outputs.format_table(rows, params))


class SweepRequest(OneModelFanOut):
    """One sweep: a study of `model`'s config, a `train-model` child per trial."""

    space: str | dict[str, Any] | None = Field(
        None, description="the search space: a YAML path or its mapping (omitted when continuing)"
    )
    trials: int = Field(8, description="the study's budget of trials, those already run included")
    study: str | None = Field(None, description="the study to start or continue (default: a new name)")


@flow(name="sweep", version=file_hash(__file__))  # not the hash of requests.py
@flat_parameters(SweepRequest)
def sweep(request: SweepRequest) -> dict[str, Any]:
    """Run (or continue) the study `study` of `trials` trials over `space` (a YAML path or its mapping; omitted
    when continuing), at most `parallel` at once. `overrides` (`KEY=VALUE`) apply to every trial; `target` and
    `num_gpus` place children as `train-all` does, one trial per GPU queue; `embedded` runs them as local processes."""
    stop.reclaim()  # embedded: SIGTERM stops the study as Ctrl-C does
    if request.trials < 1 or request.parallel < 1:
        raise ConfigError(f"trials and parallel must be at least 1, got {request.trials} and {request.parallel}")
    searched = load_space(request.space, request.model, request.overrides) if request.space is not None else None
    name = check_study_name(request.study or new_study_name(request.model))
    store = storage.open_storage(request.storage_url)
    scope = storage.storage_scope(store)  # the study name is unique only inside its storage
    journal = StudyJournal(name, store, get_settings().output_dir / "sweeps" / scope / name)
    resumed = journal.restore()
    searched = journal.check_space(searched)
    base = journal.check_settings(model_name(request.model, request.overrides), request.overrides)
    profile = model_name(request.model, base)  # resolved once with the study's settings, for every step below
    optuna_study = journal.open(searched, request.seed)
    logger = get_run_logger()
    logger.info(
        "sweep %s: %s %s trials of %s, %d at once",
        name,
        "continuing" if resumed else "starting",
        request.trials,
        profile,
        request.parallel,
    )
    common = {"data_dir": request.data_dir, "storage_url": request.storage_url, "debug": request.debug, "group": name}
    executor = TrialExecutor(
        make_launcher(request, scope),
        store,
        request.model,
        profile,
        name,
        common,
        base,
    )
    loop = StudyLoop(
        optuna_study,
        searched,
        executor,
        budget=request.trials,
        parallel=request.parallel,
        seed=request.seed,
        run_prefix=name,
        check=lambda params: check_trial(request.model, base, params),
        on_change=journal.snapshot,
        poll_seconds=request.poll_seconds,
        logger=logger,
        stopping=stop.requested,
    )
    loop.run()
    journal.snapshot()
    if stop.requested():
        return {
            "study": name,
            "model": profile,
            "status": "stopped",
            "stopped": loop.stopped,
            "location": store.location(study_key(name)),
        }
    facts = publish_outputs(journal, optuna_study, searched, profile, base, request.debug)
    _report(name, facts["rows"], list(searched.params))
    return {
        "study": name,
        "model": profile,
        "trials": len(facts["rows"]),
        "rows": facts["rows"],
        "best": facts["best"],
        "importance": facts["importance"],
        "peak_parallel": loop.peak,
        "location": store.location(study_key(name)),
        "params": list(searched.params),
        "best_yaml": store.location(study_key(name, "best.yaml")) if facts["best"] else None,
    }


def run_embedded(model: str, **options: Any) -> dict[str, Any]:
    """Run `sweep` in this process, reporting to `PREFECT_API_URL` when set, else to a temporary local Prefect API
    (`api`). After Ctrl-C or SIGTERM the running trials stop at their next step and the summary's `status` is
    "stopped", its `stopped` naming each interrupted trial; the same study continues them."""
    with api.embedded(options) as options:
        return sweep(model, **options)
