"""The phases of one model run: setup → fit → predict → score → save → publish, and what they share (the run
context, its fingerprint and run folder).

The run folder is assembled under a hidden `.partial` name and renamed when complete, so a failed run never
leaves something that looks finished. Finished work is kept: the model is saved right after `fit`, and each
phase that completes is recorded in the run's hidden `.<model>.state` folder (with the training checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from tqdm.auto import tqdm

from dialsum import console, metric
from dialsum.config import ModelConfig, dump_config, load_model_config
from dialsum.data import (
    Example,
    candidates_path,
    load_splits,
    placeholders_in,
    write_candidates,
    write_submission,
)
from dialsum.data.source import (
    code_fingerprint,
    config_fingerprint,
    data_fingerprint,
    dev_fingerprint,
)
from dialsum.engine import distributed, host_memory
from dialsum.engine.checkpoint import Checkpointer, stop_on_sigterm
from dialsum.engine.evaluation import Evaluator, held_out, selection_score
from dialsum.engine.trainer import fit
from dialsum.errors import DialsumError
from dialsum.models import checkpoint_source, family, hub, preflight
from dialsum.pipeline.result import RunResult, new_run_id  # noqa: F401  (re-exported)
from dialsum.settings import get_settings
from dialsum.state import runs, stop
from dialsum.state.phases import Phases
from dialsum.tracking import Tracker, start_tracking

log = logging.getLogger(__name__)


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


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_fingerprint(cfg, data_hash: str, debug: bool) -> str:
    """What a resumed run must share with the run it continues: config, data and debug mode."""
    return hashlib.sha256(f"{dump_config(cfg)}\0{data_hash}\0{debug}".encode()).hexdigest()


state_dir = runs.state_dir


def setup(
    model_name: str,
    run_id: str,
    data_dir: Path | None,
    debug: bool,
    group: str | None,
    force: bool = False,
    overrides: Sequence[str] = (),
    cfg: ModelConfig | None = None,
) -> RunContext:
    """Validate config and data, run preflight, then load (or build) the model; nothing heavy happens before.

    The base checkpoint is pinned to the hub commit its revision resolves to when the run starts; a retry
    loads the same commit. After a finished `fit` the saved model is loaded instead; after `save` no model is
    needed at all. `cfg`: the profile as the caller resolved it (else resolved here).
    """
    distributed.init()
    host_memory.prepare_for(device(), get_settings().keep_freed_host_memory)
    cfg = cfg or load_model_config(model_name, overrides)
    splits = load_splits(data_dir)
    get_settings().check_folders()  # after validation: bad input leaves no folder behind
    if debug:
        splits = {k: v[: cfg.training.debug_rows] for k, v in splits.items()}
    source = checkpoint_source(cfg)
    commit = hub.resolve_commit(source, cfg.revision, get_settings().hub_token())
    preflight.gate(hub.pinned(cfg, commit), splits, source, force=force)
    fam, data_hash = family(cfg), data_fingerprint(data_dir)
    phases = Phases(state_dir(run_id, cfg.name), run_fingerprint(cfg, data_hash, debug), ranks=distributed)
    commit = distributed.on_main(lambda: pinned_base(phases, commit))
    work_dir = get_settings().output_dir / run_id / f".{cfg.name}.partial"
    model = tok = None
    if not phases.done("save"):
        if distributed.is_main():
            if not phases.done("fit"):
                shutil.rmtree(work_dir, ignore_errors=True)
            work_dir.mkdir(parents=True, exist_ok=True)
        saved = work_dir / "model" if phases.done("fit") else None
        model, tok = fam.load(
            hub.pinned(cfg, commit), source, placeholders_in(splits["train"] + splits["dev"]), adapter=saved
        )
        if next(model.parameters()).device.type != device().type:
            model.to(device())
    if distributed.is_main():
        tracker = start_tracking(
            cfg.model_dump(mode="json"),
            f"{cfg.name}-{run_id}",
            group or run_id,
            get_settings().output_dir / run_id / "wandb",
        )
        dev_hash = dev_fingerprint(data_dir)
    else:  # data-parallel ranks other than 0 only train: nothing to track, no dev set to fingerprint
        tracker, dev_hash = Tracker(), None
    return RunContext(
        cfg,
        fam,
        model,
        tok,
        splits,
        run_id,
        work_dir,
        data_hash,
        tracker,
        debug,
        phases,
        dev_hash,
        tuple(overrides),
        commit,
    )


def pinned_base(phases: Phases, resolved: str | None) -> str | None:
    """The base commit this run trains on: the one recorded when it started, else `resolved` (then recorded)."""
    if (recorded := phases.get("base")) is not None:
        return recorded["commit"]
    phases.mark("base", {"commit": resolved})
    return resolved


def checkpointer(ctx: RunContext, storage_url: str | None, publish: bool, store=None) -> Checkpointer:
    """The run's checkpoints: in its state folder and, when the run publishes, in its storage location (`store`,
    else `storage_url`)."""
    from dialsum import storage

    t = ctx.cfg.training
    return Checkpointer(
        ctx.phases.folder / "checkpoints",
        t.checkpoint_every,
        t.keep_checkpoints,
        ctx.phases.fingerprint,
        ctx.run_id,
        ctx.cfg.name,
        (store or storage.open_storage(storage_url)) if publish else None,
    )


def fit_phase(ctx: RunContext, checkpoints: Checkpointer | None = None) -> dict:
    """Train (resuming from the newest checkpoint), then save the model at once; skipped when already done."""
    if (done := ctx.phases.get("fit")) is not None:
        log.info("%s: training finished earlier (%d steps); using the saved model", ctx.cfg.name, done["train_steps"])
        return done
    t = ctx.cfg.training
    features = ctx.family.build_features(ctx.cfg, ctx.tok, ctx.splits["train"], with_labels=True)
    evaluator = Evaluator(
        ctx.cfg,
        ctx.family,
        ctx.tok,
        ctx.splits["dev"],
        on_log=ctx.tracker.log,
        on_evaluation=live_progress(ctx, checkpoints.storage if checkpoints else None),
    )
    with (
        stop_on_sigterm(checkpoints, get_settings().stop_grace_seconds) if checkpoints else nullcontext(),
        stop.cooperative(),
    ):
        result = fit(
            t,
            ctx.family,
            ctx.model,
            ctx.tok,
            features,
            max_steps=t.debug_steps if ctx.debug else None,
            on_log=ctx.tracker.log,
            checkpoints=checkpoints,
            evaluation=evaluator,
            label=console.bar_label(ctx.cfg.name, "train"),
        )
    log.info(
        "%s: %d steps in %.1fs (%.0f tokens/s)", ctx.cfg.name, result.steps, result.seconds, result.tokens_per_second
    )
    if not distributed.is_main():
        return {}
    ctx.family.save(ctx.model, ctx.tok, ctx.work_dir / "model")
    done = {
        "train_steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "train_tokens_per_second": round(result.tokens_per_second, 1),
        "resumed_at_step": checkpoints.resumed_at if checkpoints else None,
        "training": {**result.evaluation, "skipped_steps": result.skipped_steps},
        "train_losses": loss_curve(result.losses),
    }
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
            log.info(
                "%s: stop requested (%s); saving and publishing the best weights so far",
                ctx.cfg.name,
                request.get("reason") or "no reason given",
            )
        return request is not None

    return after_evaluation


def generate_split(ctx: RunContext, split: str, model=None) -> list[str]:
    examples = ctx.splits[split]
    features = ctx.family.build_features(ctx.cfg, ctx.tok, examples, with_labels=False)
    with tqdm(
        total=len(examples), desc=console.bar_label(ctx.cfg.name, split), unit="dlg", leave=False, disable=None
    ) as bar:
        progress = stop.StoppingProgress(
            bar,
            f"{ctx.cfg.name}: stopped while predicting {split}"
            + (" (training finished; its model is saved)" if ctx.phases is not None and ctx.phases.done("fit") else ""),
        )
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
    with tqdm(
        total=len(examples), desc=f"{ctx.cfg.name} {split} candidates", unit="dlg", leave=False, disable=None
    ) as bar:
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
            write_submission(
                out_dir / "predictions" / f"{split}.csv", [e.fname for e in ctx.splits[split]], preds[split]
            )
    return preds


def score_phase(ctx: RunContext, preds: dict[str, list[str]], extra: dict) -> dict:
    """metrics.json: the full-dev score, the scores on the held-out part (with the split) and the selection part
    of the one dev split (`data.holdout`), how many dev rows were scored, each dev row's score (for paired
    comparisons), plus `extra`."""
    dev = ctx.splits["dev"]
    metrics = {
        "model": ctx.cfg.name,
        "type": ctx.cfg.type,
        "run_id": ctx.run_id,
        "dev": dev_score(ctx, preds["dev"]),
        "dev_held_out": held_out(ctx.cfg, dev, preds["dev"], extra.get("training")),
        "dev_selection": selection_score(dev, preds["dev"]),
        "dev_rows": len(preds["dev"]),
        "dev_row_scores": dict(
            zip([ex.fname for ex in dev], metric.row_scores(preds["dev"], [ex.summary for ex in dev]))
        ),
    }
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
    record = {
        "generate": resolved,
        "batch_size": g.batch_size,
        "no_repeat": {"ngram_size": g.no_repeat_ngram_size, "exempt_ids": exempt},
    }
    if g.num_candidates > 1:
        drawn = ctx.family.candidate_generation_config(ctx.cfg, ctx.model, ctx.tok).to_dict()
        record["candidates"] = {
            "method": ctx.cfg.candidate_method,
            "num_candidates": g.num_candidates,
            "seed": ctx.cfg.training.seed,
            "generate": {k: v for k, v in drawn.items() if v is not None and not k.startswith("_")},
        }
    (ctx.work_dir / "generation_config.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))


def loss_curve(losses: list[float], points: int = 500) -> list[float]:
    """The training loss per optimizer step, averaged into at most `points` buckets for the report."""
    if len(losses) <= points:
        return [round(x, 5) for x in losses]
    size = len(losses) / points
    buckets = [losses[int(i * size) : int((i + 1) * size)] for i in range(points)]
    return [round(sum(b) / len(b), 5) for b in buckets if b]


def run_facts(ctx: RunContext) -> dict:
    """What decides whether a later run would be identical: dev data, code, debug (see `datasource`)."""
    return {"dev_sha256": ctx.dev_hash, "code_sha256": code_fingerprint(), "debug": ctx.debug}


def publish_phase(ctx: RunContext, run_dir: Path, storage_url: str | None, force: bool, store=None) -> str:
    from dialsum import storage

    result = storage.publish(
        run_dir,
        ctx.run_id,
        ctx.cfg.name,
        storage=store or storage.open_storage(storage_url),
        extra={
            "config_sha256": config_fingerprint(ctx.cfg),
            "data_sha256": ctx.data_hash,
            "type": ctx.cfg.type,
            "base_commit": ctx.base_commit,
            **run_facts(ctx),
        },
        force=force,
    )
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
    extra = {
        "dev_score_before": before,
        **fitted,
        "debug": ctx.debug,
        "overrides": list(ctx.overrides),
        "base": {"model": ctx.cfg.model, "revision": ctx.cfg.revision, "commit": ctx.base_commit},
        "seconds": round(time.perf_counter() - started, 2),
    }
    metrics = score_phase(ctx, preds, extra)
    return metrics, save_phase(ctx, metrics)
