"""One model run in phases: setup → fit → predict → score → save → publish.

The run folder is assembled under a hidden `.partial` name and renamed when complete, so a failed run never
leaves something that looks finished. Finished work is kept: the model is saved right after `fit`, and each
phase that completes is recorded in the run's hidden `.<model>.state` folder (with the training checkpoints).
A retry with the same run id continues from the first phase that did not complete; training itself resumes
from the newest checkpoint, local or published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from dialsum import console, metric
from dialsum.config import dump_config, load_model_config
from dialsum.data import (
    Example, candidates_path, load_splits, placeholders_in, sample_dir, write_candidates, write_submission,
)
from dialsum.data.source import code_fingerprint, config_fingerprint, data_fingerprint, dev_fingerprint
from dialsum.engine import distributed, host_memory, runs, stop
from dialsum.engine.checkpoint import Checkpointer, Phases, stop_on_sigterm
from dialsum.engine.evaluation import Evaluator, held_out
from dialsum.engine.trainer import fit
from dialsum.errors import DataError, DialsumError
from dialsum.models import checkpoint_source, family, hub, preflight
from dialsum.settings import get_settings
from dialsum.tracking import Tracker, start_tracking

log = logging.getLogger(__name__)


def new_run_id() -> str:
    from dialsum import storage

    return storage.new_run_id()


@dataclass
class RunContext:
    cfg: object
    family: ModuleType
    model: object
    tok: object
    splits: dict[str, list[Example]]
    run_id: str
    work_dir: Path
    data_hash: str
    tracker: Tracker = field(default_factory=Tracker)
    debug: bool = False
    phases: Phases | None = None
    dev_hash: str | None = None
    overrides: tuple[str, ...] = ()
    base_commit: str | None = None


@dataclass
class RunResult:
    model: str
    type: str
    run_id: str
    run_dir: Path
    metrics: dict
    location: str | None = None
    status: str = "completed"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_fingerprint(cfg, data_hash: str, debug: bool) -> str:
    """What a resumed run must share with the run it continues: config, data and debug mode."""
    return hashlib.sha256(f"{dump_config(cfg)}\0{data_hash}\0{debug}".encode()).hexdigest()


state_dir = runs.state_dir


def setup(model_name: str, run_id: str, data_dir: Path | None, debug: bool, group: str | None,
          force: bool = False, overrides: Sequence[str] = ()) -> RunContext:
    """Validate config and data, run preflight, then load (or build) the model; nothing heavy happens before.

    The base checkpoint is pinned to the hub commit its revision resolves to when the run starts; a retry
    loads the same commit. After a finished `fit` the saved model is loaded instead; after `save` no model is
    needed at all.
    """
    distributed.init()
    host_memory.prepare_for(device(), get_settings().keep_freed_host_memory)
    cfg = load_model_config(model_name, overrides)
    splits = load_splits(data_dir)
    get_settings().check_folders()  # after validation: bad input leaves no folder behind
    if debug:
        splits = {k: v[: cfg.training.debug_rows] for k, v in splits.items()}
    source = checkpoint_source(cfg)
    commit = hub.resolve_commit(source, cfg.revision, get_settings().hub_token())
    preflight.gate(hub.pinned(cfg, commit), splits, source, force=force)
    fam, data_hash = family(cfg), data_fingerprint(data_dir)
    phases = Phases(state_dir(run_id, cfg.name), run_fingerprint(cfg, data_hash, debug))
    commit = distributed.on_main(lambda: pinned_base(phases, commit))
    work_dir = get_settings().output_dir / run_id / f".{cfg.name}.partial"
    model = tok = None
    if not phases.done("save"):
        if distributed.is_main():
            if not phases.done("fit"):
                shutil.rmtree(work_dir, ignore_errors=True)
            work_dir.mkdir(parents=True, exist_ok=True)
        saved = work_dir / "model" if phases.done("fit") else None
        model, tok = fam.load(hub.pinned(cfg, commit), source, placeholders_in(splits["train"] + splits["dev"]), adapter=saved)
        if next(model.parameters()).device.type != device().type:
            model.to(device())
    if not distributed.is_main():  # data-parallel ranks other than 0 only train
        return RunContext(cfg, fam, model, tok, splits, run_id, work_dir, data_hash, Tracker(), debug, phases,
                          overrides=tuple(overrides), base_commit=commit)
    tracker = start_tracking(cfg.model_dump(mode="json"), f"{cfg.name}-{run_id}", group or run_id,
                             get_settings().output_dir / run_id / "wandb")
    return RunContext(cfg, fam, model, tok, splits, run_id, work_dir, data_hash, tracker, debug, phases,
                      dev_fingerprint(data_dir), tuple(overrides), commit)


def pinned_base(phases: Phases, resolved: str | None) -> str | None:
    """The base commit this run trains on: the one recorded when it started, else `resolved` (then recorded)."""
    if (recorded := phases.get("base")) is not None:
        return recorded["commit"]
    phases.mark("base", {"commit": resolved})
    return resolved


def checkpointer(ctx: RunContext, storage_url: str | None, publish: bool) -> Checkpointer:
    """The run's checkpoints: in its state folder and, when the run publishes, in its storage location."""
    from dialsum import storage

    t = ctx.cfg.training
    return Checkpointer(ctx.phases.folder / "checkpoints", t.checkpoint_every, t.keep_checkpoints,
                        ctx.phases.fingerprint, ctx.run_id, ctx.cfg.name,
                        storage.open_storage(storage_url) if publish else None)


def fit_phase(ctx: RunContext, checkpoints: Checkpointer | None = None) -> dict:
    """Train (resuming from the newest checkpoint), then save the model at once; skipped when already done."""
    if (done := ctx.phases.get("fit")) is not None:
        log.info("%s: training finished earlier (%d steps); using the saved model", ctx.cfg.name, done["train_steps"])
        return done
    t = ctx.cfg.training
    features = ctx.family.build_features(ctx.cfg, ctx.tok, ctx.splits["train"], with_labels=True)
    evaluator = Evaluator(ctx.cfg, ctx.family, ctx.tok, ctx.splits["dev"], on_log=ctx.tracker.log,
                          on_evaluation=live_progress(ctx, checkpoints.storage if checkpoints else None))
    with stop_on_sigterm(checkpoints, get_settings().stop_grace_seconds) if checkpoints else nullcontext(), \
            stop.cooperative():
        result = fit(t, ctx.family, ctx.model, ctx.tok, features, max_steps=t.debug_steps if ctx.debug else None,
                     on_log=ctx.tracker.log, checkpoints=checkpoints, evaluation=evaluator,
                     label=console.bar_label(ctx.cfg.name, "train"))
    log.info("%s: %d steps in %.1fs (%.0f tokens/s)", ctx.cfg.name, result.steps, result.seconds, result.tokens_per_second)
    if not distributed.is_main():
        return {}
    ctx.family.save(ctx.model, ctx.tok, ctx.work_dir / "model")
    done = {"train_steps": result.steps, "train_seconds": round(result.seconds, 2),
            "train_tokens_per_second": round(result.tokens_per_second, 1),
            "resumed_at_step": checkpoints.resumed_at if checkpoints else None,
            "training": {**result.evaluation, "skipped_steps": result.skipped_steps},
            "train_losses": loss_curve(result.losses)}
    ctx.phases.mark("fit", done)
    return done


def live_progress(ctx: RunContext, store) -> Callable[[list[dict]], bool] | None:
    """The evaluation hook of a publishing run: publish the curve so far (`progress.json`), then stop training if
    a stop request (`STOP`, e.g. a sweep pruning this trial) is there. A storage hiccup never stops training."""
    if store is None:
        return None
    from dialsum import storage

    def after_evaluation(curve: list[dict]) -> bool:
        try:
            storage.write_progress(ctx.run_id, ctx.cfg.name, curve, store)
            request = storage.stop_request(ctx.run_id, ctx.cfg.name, store)
        except (DialsumError, OSError) as exc:
            log.warning("%s: cannot publish the evaluation curve or read a stop request: %s", ctx.cfg.name, exc)
            return False
        if request is not None:
            log.info("%s: stop requested (%s); saving and publishing the best weights so far", ctx.cfg.name,
                     request.get("reason") or "no reason given")
        return request is not None

    return after_evaluation


def generate_split(ctx: RunContext, split: str, model=None) -> list[str]:
    examples = ctx.splits[split]
    features = ctx.family.build_features(ctx.cfg, ctx.tok, examples, with_labels=False)
    with tqdm(total=len(examples), desc=console.bar_label(ctx.cfg.name, split), unit="dlg", leave=False,
              disable=None) as bar:
        progress = stop.StoppingProgress(bar, f"{ctx.cfg.name}: stopped while predicting {split}"
                                         + (" (training finished; its model is saved)"
                                            if ctx.phases is not None and ctx.phases.done("fit") else ""))
        return ctx.family.generate(ctx.cfg, model or ctx.model, ctx.tok, features, progress=progress)


def dev_score(ctx: RunContext, predictions: list[str] | None = None) -> dict:
    predictions = predictions if predictions is not None else generate_split(ctx, "dev")
    return metric.score(predictions, [ex.summary for ex in ctx.splits["dev"]])


def predict_split(ctx: RunContext, split: str, model, folder: Path) -> list[str]:
    """The split's predictions; with `generation.num_candidates` > 1 also its candidates (with log-probabilities),
    written to folder/<split>_candidates.jsonl for MBR."""
    if ctx.cfg.generation.num_candidates <= 1:
        return generate_split(ctx, split, model)
    examples = ctx.splits[split]
    features = ctx.family.build_features(ctx.cfg, ctx.tok, examples, with_labels=False)
    with tqdm(total=len(examples), desc=f"{ctx.cfg.name} {split} candidates", unit="dlg", leave=False,
              disable=None) as bar:
        texts, candidates = ctx.family.generate_candidates(ctx.cfg, model, ctx.tok, features, progress=bar)
    write_candidates(candidates_path(folder, split), [e.fname for e in examples], candidates)
    return texts


def predict(ctx: RunContext, out_dir: Path) -> dict[str, list[str]]:
    """Generate dev and test (when present) and write submission-shaped CSVs under out_dir/predictions (and the
    candidate files, when the config asks for candidates).

    Generation uses the family's inference model (e.g. adapters merged into a dense copy); `ctx.model` is kept
    as trained, for saving."""
    preds, model = {}, ctx.family.inference_model(ctx.cfg, ctx.model)
    for split in ("dev", "test"):
        if split in ctx.splits:
            preds[split] = predict_split(ctx, split, model, out_dir / "predictions")
            write_submission(out_dir / "predictions" / f"{split}.csv", [e.fname for e in ctx.splits[split]], preds[split])
    return preds


def score_phase(ctx: RunContext, preds: dict[str, list[str]], extra: dict) -> dict:
    """metrics.json: the full-dev score, the score on dev rows that did not choose the best training step, and
    how many dev rows were scored, each dev row's score (for paired comparisons), plus `extra`."""
    dev = ctx.splits["dev"]
    metrics = {"model": ctx.cfg.name, "type": ctx.cfg.type, "run_id": ctx.run_id, "dev": dev_score(ctx, preds["dev"]),
               "dev_held_out": held_out(ctx.cfg, dev, preds["dev"], extra.get("training")),
               "dev_rows": len(preds["dev"]),
               "dev_row_scores": dict(zip([ex.fname for ex in dev], metric.row_scores(preds["dev"], [ex.summary for ex in dev])))}
    metrics.update(extra)
    (ctx.work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    ctx.tracker.log({f"dev/{k}": v for k, v in metrics["dev"].items()})
    return metrics


def save_phase(ctx: RunContext, metrics: dict) -> Path:
    """Add the resolved config beside the saved model, record the phase, then move the folder into place.

    The phase is recorded before the rename, and `finish_save` completes a rename that a crash interrupted, so
    a retry never looks for a `.partial` folder that was already moved."""
    save_generation_config(ctx)
    (ctx.work_dir / "config.yaml").write_text(dump_config(ctx.cfg), encoding="utf-8")
    ctx.phases.mark("save", {"metrics": metrics})
    return finish_save(ctx)


def finish_save(ctx: RunContext) -> Path:
    """Move the complete `.partial` folder to the run folder (nothing to do when an earlier attempt did)."""
    final = ctx.work_dir.parent / ctx.cfg.name
    if ctx.work_dir.is_dir():
        shutil.rmtree(final, ignore_errors=True)
        ctx.work_dir.rename(final)
    return final


def save_generation_config(ctx: RunContext) -> None:
    """The generation settings the predictions were made with, as transformers resolved them, plus our rules."""
    resolved = ctx.family.generation_config(ctx.cfg, ctx.model, ctx.tok).to_dict()
    resolved = {k: v for k, v in resolved.items() if v is not None and not k.startswith("_")}
    g = ctx.cfg.generation
    exempt = ctx.family.no_repeat_exempt_ids(ctx.cfg, ctx.tok) if g.no_repeat_ngram_size else []
    record = {"generate": resolved, "batch_size": g.batch_size,
              "no_repeat": {"ngram_size": g.no_repeat_ngram_size, "exempt_ids": exempt}}
    if g.num_candidates > 1:
        drawn = ctx.family.candidate_generation_config(ctx.cfg, ctx.model, ctx.tok).to_dict()
        record["candidates"] = {"method": ctx.cfg.candidate_method, "num_candidates": g.num_candidates,
                                "seed": ctx.cfg.training.seed,
                                "generate": {k: v for k, v in drawn.items() if v is not None and not k.startswith("_")}}
    (ctx.work_dir / "generation_config.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))


def loss_curve(losses: list[float], points: int = 500) -> list[float]:
    """The training loss per optimizer step, averaged into at most `points` buckets for the report."""
    if len(losses) <= points:
        return [round(x, 5) for x in losses]
    size = len(losses) / points
    buckets = [losses[int(i * size): int((i + 1) * size)] for i in range(points)]
    return [round(sum(b) / len(b), 5) for b in buckets if b]


def run_facts(ctx: RunContext) -> dict:
    """What decides whether a later run would be identical: dev data, code, debug (see `datasource`)."""
    return {"dev_sha256": ctx.dev_hash, "code_sha256": code_fingerprint(), "debug": ctx.debug}


def publish_phase(ctx: RunContext, run_dir: Path, storage_url: str | None, force: bool) -> str:
    from dialsum import storage

    result = storage.publish(run_dir, ctx.run_id, ctx.cfg.name, storage=storage.open_storage(storage_url),
                             extra={"config_sha256": config_fingerprint(ctx.cfg), "data_sha256": ctx.data_hash, "type": ctx.cfg.type,
                                    "base_commit": ctx.base_commit, **run_facts(ctx)},
                             force=force)
    return result.url


def before_phase(ctx: RunContext, eval_before: bool) -> float | None:
    """The untrained model's dev score (when asked), measured once per run; data-parallel ranks each summarize
    every world-th dev row, and rank 0 scores the gathered summaries and records the score."""
    if (done := ctx.phases.get("before")) is not None or not eval_before or ctx.phases.done("fit"):
        return (done or {}).get("score")
    features = ctx.family.build_features(ctx.cfg, ctx.tok, ctx.splits["dev"], with_labels=False)
    predictions = distributed.map_shards(lambda rows: ctx.family.generate(ctx.cfg, ctx.model, ctx.tok, rows), features)
    score = distributed.on_main(lambda: dev_score(ctx, predictions)["score"])
    ctx.phases.mark("before", {"score": score})
    return score


def train_and_save(ctx: RunContext, eval_before: bool, checkpoints: Checkpointer, started: float) -> tuple[dict, Path]:
    """The phases up to a complete local run folder, each skipped when an earlier attempt finished it."""
    if (done := ctx.phases.get("save")) is not None:
        return done["metrics"], finish_save(ctx)
    before = before_phase(ctx, eval_before)
    fitted = fit_phase(ctx, checkpoints)
    if not distributed.is_main():
        return {}, ctx.work_dir
    if (preds := ctx.phases.get("predict")) is None:
        preds = predict(ctx, ctx.work_dir)
        ctx.phases.mark("predict", preds)
    extra = {"dev_score_before": before, **fitted, "debug": ctx.debug, "overrides": list(ctx.overrides),
             "base": {"model": ctx.cfg.model, "revision": ctx.cfg.revision, "commit": ctx.base_commit},
             "seconds": round(time.perf_counter() - started, 2)}
    metrics = score_phase(ctx, preds, extra)
    return metrics, save_phase(ctx, metrics)


def run_model(
    model_name: str, run_id: str | None = None, data_dir: Path | None = None, debug: bool = False,
    eval_before: bool = False, storage_url: str | None = None, publish: bool = True, force: bool = False,
    group: str | None = None, resume: bool = False, overrides: Sequence[str] = (), lease_wait: float = 0.0,
) -> RunResult:
    """Train, predict, score and publish one model; the single entry point every caller uses.

    A failure keeps every finished phase; running the same run id again continues where it stopped
    (`resume=True` insists that there is something to continue), and a run already published with the same
    config and data is complete: it is returned as published, and nothing is written. While it runs, the
    process holds the run's lease (`storage.lease`): a second process with the same run id and model is
    refused, after waiting up to `lease_wait` seconds for the holder's lease to expire. `overrides` (`KEY=VALUE`,
    see `config.apply_overrides`) change the profile; the resolved config is what the run records and fingerprints.
    """
    run_id = run_id or new_run_id()
    if resume:
        require_resumable(model_name, run_id, storage_url, overrides)
    if publish and (done := already_complete(model_name, run_id, data_dir, debug, storage_url, force, overrides)) is not None:
        return done
    name = load_model_config(model_name, overrides).name
    with run_lease(name, run_id, storage_url, publish, lease_wait) as lease:
        stop.check(f"{name}: not started")
        started = time.perf_counter()
        try:
            ctx = setup(model_name, run_id, data_dir, debug, group, force=force, overrides=overrides)
        except BaseException as exc:
            runs.discard_if_unstarted(run_id, name)
            if isinstance(exc, KeyboardInterrupt):
                raise stop.Interrupted(f"{name}: stopped while setting up, before training") from None
            raise
        try:
            metrics, run_dir = train_and_save(ctx, eval_before, checkpointer(ctx, storage_url, publish), started)
            if not distributed.is_main():
                return RunResult(ctx.cfg.name, ctx.cfg.type, run_id, ctx.work_dir, {})
            stop.check(f"{name}: stopped before publishing; its run folder {run_dir} is complete")
            if lease is not None:
                lease.check()
            location = publish_phase(ctx, run_dir, storage_url, force) if publish else None
        except BaseException as exc:
            if (outcome := failed(ctx, exc)) is exc:
                raise
            raise outcome from None
    ctx.phases.clear()
    ctx.tracker.finish({"dev_score": metrics["dev"]["score"]})
    return RunResult(ctx.cfg.name, ctx.cfg.type, run_id, run_dir, metrics, location)


def failed(ctx: RunContext, exc: BaseException) -> BaseException:
    """After a failure: what to raise (Ctrl-C outside the loop becomes `stop.Interrupted`, saying where it
    stopped), and one line saying what is kept, unless nothing had finished and nothing is kept."""
    ctx.tracker.finish(failed=True)
    if isinstance(exc, KeyboardInterrupt):
        exc = stop.Interrupted(runs.stopped_where(ctx.run_id, ctx.cfg.name))
    if not runs.discard_if_unstarted(ctx.run_id, ctx.cfg.name) and not isinstance(exc, stop.Interrupted):
        log.warning("%s: run %s stopped; finished phases are kept in %s, and running the same run id continues "
                    "from there", ctx.cfg.name, ctx.run_id, ctx.phases.folder)
    return exc


@contextmanager
def run_lease(name: str, run_id: str, storage_url: str | None, publish: bool, wait: float):
    """Hold the run's lease while the block runs; none for unpublished runs and for data-parallel ranks (the
    process that launched them holds it)."""
    from dialsum import storage

    if not publish or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield None
        return
    with storage.hold(storage.open_storage(storage_url), run_id, name, get_settings().lease_seconds, wait) as lease:
        yield lease


def already_complete(model_name: str, run_id: str, data_dir: Path | None, debug: bool, storage_url: str | None,
                     force: bool, overrides: Sequence[str] = ()) -> RunResult | None:
    """The published result when `run_id` already holds this model with the same config, data and debug mode."""
    from dialsum import storage

    cfg, store = load_model_config(model_name, overrides), storage.open_storage(storage_url)
    if (metrics := runs.published(run_id, cfg, data_dir, debug, store, force)) is None:
        return None
    where = store.location(storage.run_key(run_id, cfg.name))
    log.info("%s: run %s is already complete (published to %s); nothing to do", cfg.name, run_id, where)
    return RunResult(cfg.name, cfg.type, run_id, get_settings().output_dir / run_id / cfg.name, metrics, where,
                     status="already complete")


def require_resumable(model_name: str, run_id: str, storage_url: str | None, overrides: Sequence[str] = ()) -> None:
    """Refuse a resume of a run that left nothing behind, locally or in storage."""
    from dialsum import storage

    runs.require_resumable(run_id, [load_model_config(model_name, overrides).name], storage.open_storage(storage_url))


def run_model_on_gpus(
    model_name: str, gpus: int, run_id: str, data_dir: Path | None = None, debug: bool = False,
    eval_before: bool = False, storage_url: str | None = None, overrides: Sequence[str] = (),
) -> RunResult:
    """`run_model` data-parallel on `gpus` GPUs: one process per GPU (`distributed.launch_command`; rank 0 saves
    and publishes); returns what rank 0 left in the run folder."""
    argv = ["train", "--models", model_name, "--run-id", run_id]
    argv += ["--data", str(data_dir)] if data_dir else []
    argv += ["--storage", storage_url] if storage_url else []
    argv += [flag for flag, on in (("--debug", debug), ("--eval-before", eval_before)) if on]
    argv += [arg for override in overrides for arg in ("--set", override)]
    with run_lease(load_model_config(model_name, overrides).name, run_id, storage_url, True, 0.0):  # the ranks take none
        code = distributed.launch(argv, gpus)
    if code:
        raise DialsumError(f"{model_name}: data-parallel training on {gpus} GPUs exited with code {code}")
    cfg = load_model_config(model_name, overrides)
    run_dir = get_settings().output_dir / run_id / cfg.name
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return RunResult(cfg.name, cfg.type, run_id, run_dir, metrics)


def open_run(run_dir: Path, data_dir: Path | None = None, splits: Sequence[str] = ("dev",)) -> RunContext:
    """A saved run folder loaded for generation: its config, model (adapters applied) and tokenizer, with `splits`
    of `data_dir`; `ctx.cfg` may then be replaced by a variant (e.g. other generation settings)."""
    cfg = load_model_config(str(run_dir / "config.yaml"))
    data = load_splits(data_dir, splits=tuple(splits))
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(sum(data.values(), [])), adapter=run_dir / "model")
    model.to(device())
    return RunContext(cfg, fam, model, tok, data, run_dir.parent.name, run_dir, "")


def predict_run(run_dir: Path, data_dir: Path | None = None, out_dir: Path | None = None) -> dict:
    """Predict dev/test with a saved run folder, on the base commit the run trained on; writes predictions and
    returns the dev scores (if any)."""
    cfg = load_model_config(str(run_dir / "config.yaml"))
    splits = load_splits(data_dir, splits=("dev", "test"), optional=("dev", "test"))
    if not splits:
        raise DataError(f"{data_dir or sample_dir()}: neither dev.csv nor test.csv found")
    fam = family(cfg)
    commit = recorded_base(run_dir)
    model, tok = fam.load(hub.pinned(cfg, commit), checkpoint_source(cfg), placeholders_in(sum(splits.values(), [])),
                          adapter=run_dir / "model")
    model.to(device())
    ctx = RunContext(cfg, fam, model, tok, splits, run_dir.parent.name, run_dir, "", base_commit=commit)
    preds = predict(ctx, out_dir or run_dir)
    return dev_score(ctx, preds["dev"]) if "dev" in preds else {}


def recorded_base(run_dir: Path) -> str | None:
    """The base commit a saved run trained on (its metrics.json), or None (a local base, or an older run)."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return (metrics.get("base") or {}).get("commit")
