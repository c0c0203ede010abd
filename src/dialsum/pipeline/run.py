"""A model run across attempts: `run_model` sequences the phases under the run's lease, continues from what an
earlier attempt finished, returns an already published run untouched, and says what a stopped run kept;
`launch_on_gpus` and `run_model_on_gpus` run it data-parallel.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dialsum.config import load_model_config
from dialsum.errors import DialsumError
from dialsum.models import families
from dialsum.pipeline.result import RunResult, new_run_id
from dialsum.settings import get_settings
from dialsum.state import runs, stop

if TYPE_CHECKING:
    from dialsum.config import ModelConfig
    from dialsum.pipeline.phases import RunContext
    from dialsum.storage import Storage

log = logging.getLogger(__name__)


def run_model(
    model_name: str,
    run_id: str | None = None,
    data_dir: Path | None = None,
    debug: bool = False,
    eval_before: bool = False,
    storage_url: str | None = None,
    publish: bool = True,
    force: bool = False,
    group: str | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
    lease_wait: float = 0.0,
    store: Storage | None = None,
) -> RunResult:
    """Train, predict, score and publish one model; the single entry point every caller uses.

    A failure keeps every finished phase; running the same run id again continues where it stopped
    (`resume=True` insists that there is something to continue), and a run already published with the same
    config and data is complete: it is returned as published, and nothing is written. While it runs, the
    process holds the run's lease (`storage.lease`): a second process with the same run id and model is
    refused, after waiting up to `lease_wait` seconds for the holder's lease to expire. `overrides` (`KEY=VALUE`,
    see `config.apply_overrides`) change the profile; the resolved config is what the run records and fingerprints.
    The config is resolved once and the storage (`store`, else `storage_url`) opened once, for every step.
    """
    run_id = run_id or new_run_id()
    cfg = load_model_config(model_name, overrides)
    if publish or resume:
        store = store or _open(storage_url)
    if resume:
        runs.require_resumable(run_id, [cfg.name], store)
    if publish and (done := already_complete(cfg, run_id, data_dir, debug, store, force)) is not None:
        return done
    if not families.trainable(cfg):
        return run_generate_only(cfg, run_id, data_dir, debug, storage_url, publish, force, lease_wait, store)
    from dialsum.engine import distributed
    from dialsum.pipeline.phases import checkpointer, publish_phase, setup, train_and_save

    name = cfg.name
    with run_lease(name, run_id, storage_url, publish, lease_wait, store) as lease:
        stop.check(f"{name}: not started")
        started = time.perf_counter()
        try:
            ctx = setup(model_name, run_id, data_dir, debug, group, force=force, overrides=overrides, cfg=cfg)
        except BaseException as exc:
            runs.discard_if_unstarted(run_id, name)
            if isinstance(exc, KeyboardInterrupt):
                raise stop.Interrupted(f"{name}: stopped while setting up, before training") from None
            raise
        try:
            metrics, run_dir = train_and_save(ctx, eval_before, checkpointer(ctx, storage_url, publish, store), started)
            if not distributed.is_main():
                return RunResult(ctx.cfg.name, ctx.cfg.type, run_id, ctx.work_dir, {})
            stop.check(f"{name}: stopped before publishing; its run folder {run_dir} is complete")
            if lease is not None:
                lease.check()
            location = publish_phase(ctx, run_dir, storage_url, force, store) if publish else None
        except BaseException as exc:
            if (outcome := failed(ctx, exc)) is exc:
                raise
            raise outcome from None
    ctx.phases.clear()
    ctx.tracker.finish({"dev_score": metrics["dev"]["score"]})
    return RunResult(ctx.cfg.name, ctx.cfg.type, run_id, run_dir, metrics, location)


def run_generate_only(
    cfg,
    run_id: str,
    data_dir: Path | None,
    debug: bool,
    storage_url: str | None,
    publish: bool,
    force: bool,
    lease_wait: float,
    store: Storage | None = None,
) -> RunResult:
    """`run_model` for a family that only generates (`pipeline.generate_only`): no weights, hub, checkpoints or fit."""
    from dialsum.pipeline import generate_only

    with run_lease(cfg.name, run_id, storage_url, publish, lease_wait, store):
        stop.check(f"{cfg.name}: not started")
        try:
            metrics, run_dir, location, state = generate_only.run(
                cfg, run_id, data_dir, debug, publish, storage_url, force, store
            )
        except KeyboardInterrupt:
            raise stop.Interrupted(f"{cfg.name}: stopped while predicting; its cached responses are kept") from None
        except BaseException:
            if not runs.discard_if_unstarted(run_id, cfg.name):
                log.warning(
                    "%s: run %s stopped; its cached responses are kept in %s, and running the same run id "
                    "continues from there",
                    cfg.name,
                    run_id,
                    runs.state_dir(run_id, cfg.name),
                )
            raise
    state.clear()
    return RunResult(cfg.name, cfg.type, run_id, run_dir, metrics, location)


def failed(ctx: RunContext, exc: BaseException) -> BaseException:
    """After a failure: what to raise (Ctrl-C outside the loop becomes `stop.Interrupted`, saying where it
    stopped), and one line saying what is kept, unless nothing had finished and nothing is kept."""
    ctx.tracker.finish(failed=True)
    if isinstance(exc, KeyboardInterrupt):
        exc = stop.Interrupted(runs.stopped_where(ctx.run_id, ctx.cfg.name))
    if not runs.discard_if_unstarted(ctx.run_id, ctx.cfg.name) and not isinstance(exc, stop.Interrupted):
        log.warning(
            "%s: run %s stopped; finished phases are kept in %s, and running the same run id continues from there",
            ctx.cfg.name,
            ctx.run_id,
            ctx.phases.folder,
        )
    return exc


@contextmanager
def run_lease(
    name: str, run_id: str, storage_url: str | None, publish: bool, wait: float, store: Storage | None = None
):
    """Hold the run's lease (in `store`, else `storage_url`) while the block runs; none for unpublished runs and for
    data-parallel ranks (the process that launched them holds it)."""
    from dialsum import storage

    if not publish or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield None
        return
    with storage.hold(
        store or storage.open_storage(storage_url), run_id, name, get_settings().lease_seconds, wait
    ) as lease:
        yield lease


def already_complete(
    cfg: ModelConfig, run_id: str, data_dir: Path | None, debug: bool, store: Storage, force: bool
) -> RunResult | None:
    """The published result when `run_id` already holds this model with the same config, data and debug mode."""
    from dialsum import storage

    if (metrics := runs.published(run_id, cfg, data_dir, debug, store, force)) is None:
        return None
    where = store.location(storage.run_key(run_id, cfg.name))
    log.info("%s: run %s is already complete (published to %s); nothing to do", cfg.name, run_id, where)
    return RunResult(
        cfg.name,
        cfg.type,
        run_id,
        get_settings().output_dir / run_id / cfg.name,
        metrics,
        where,
        status="already complete",
    )


def _open(storage_url: str | None) -> Storage:
    from dialsum import storage

    return storage.open_storage(storage_url)


def launch_on_gpus(
    model_name: str,
    gpus: int,
    run_id: str,
    data_dir: str | Path | None = None,
    debug: bool = False,
    eval_before: bool = False,
    storage_url: str | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    verbose: bool = False,
) -> int:
    """The `train` command for one model once per GPU (`distributed.launch_command`; rank 0 saves and publishes),
    under one run id, this process holding the run's lease meanwhile (the ranks take none); returns the launch's
    exit code."""
    argv = ["train", "--models", model_name, "--run-id", run_id]
    argv += ["--data", str(data_dir)] if data_dir else []
    argv += ["--storage", storage_url] if storage_url else []
    argv += [flag for flag, on in (("--debug", debug), ("--eval-before", eval_before), ("--force", force)) if on]
    argv += [arg for override in overrides for arg in ("--set", override)]
    from dialsum.engine import distributed

    with run_lease(load_model_config(model_name, overrides).name, run_id, storage_url, True, 0.0):
        return distributed.launch(["-v", *argv] if verbose else argv, gpus)


def run_model_on_gpus(
    model_name: str,
    gpus: int,
    run_id: str,
    data_dir: Path | None = None,
    debug: bool = False,
    eval_before: bool = False,
    storage_url: str | None = None,
    overrides: Sequence[str] = (),
) -> RunResult:
    """`run_model` data-parallel on `gpus` GPUs (`launch_on_gpus`); returns what rank 0 left in the run folder."""
    code = launch_on_gpus(model_name, gpus, run_id, data_dir, debug, eval_before, storage_url, overrides)
    stop.check(f"{model_name}: data-parallel training stopped; its newest checkpoint is kept")
    if code:
        raise DialsumError(f"{model_name}: data-parallel training on {gpus} GPUs exited with code {code}")
    cfg = load_model_config(model_name, overrides)
    run_dir = get_settings().output_dir / run_id / cfg.name
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return RunResult(cfg.name, cfg.type, run_id, run_dir, metrics)
