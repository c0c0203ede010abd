"""One model run in phases: setup → fit → predict → score → publish.

The run folder is assembled under a hidden `.partial` name and renamed when complete, so a failed run never
leaves something that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import torch
from tqdm.auto import tqdm

from dialsum import metric
from dialsum.config import dump_config, load_model_config
from dialsum.data import Example, load_splits, placeholders_in, sample_dir, write_submission
from dialsum.errors import DataError
from dialsum.models import checkpoint_source, family
from dialsum.settings import get_settings
from dialsum.tracking import Tracker, start_tracking
from dialsum.trainer import FitResult, fit

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


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
    dev_hash: str | None = None


@dataclass
class RunResult:
    model: str
    type: str
    run_id: str
    run_dir: Path
    metrics: dict
    location: str | None = None


def data_fingerprint(data_dir: Path | None) -> str:
    root = Path(data_dir) if data_dir else sample_dir()
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.csv")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(model_name: str, run_id: str, data_dir: Path | None, debug: bool, group: str | None) -> RunContext:
    """Validate config and data, then load (or build) the model; nothing heavy happens before validation."""
    cfg = load_model_config(model_name)
    splits = load_splits(data_dir)
    if debug:
        splits = {k: v[: cfg.training.debug_rows] for k, v in splits.items()}
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"] + splits["dev"]))
    if next(model.parameters()).device.type != device().type:
        model.to(device())
    work_dir = get_settings().output_dir / run_id / f".{cfg.name}.partial"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    tracker = start_tracking(cfg.model_dump(mode="json"), f"{cfg.name}-{run_id}", group or run_id,
                             get_settings().output_dir / run_id / "wandb")
    from dialsum.datasource import dev_fingerprint

    return RunContext(cfg, fam, model, tok, splits, run_id, work_dir, data_fingerprint(data_dir), tracker, debug,
                      dev_fingerprint(data_dir))


def fit_phase(ctx: RunContext) -> FitResult:
    t = ctx.cfg.training
    features = ctx.family.build_features(ctx.cfg, ctx.tok, ctx.splits["train"], with_labels=True)
    result = fit(t, ctx.family, ctx.model, ctx.tok, features, max_steps=t.debug_steps if ctx.debug else None,
                 on_log=ctx.tracker.log)
    log.info("%s: %d steps in %.1fs (%.0f tokens/s)", ctx.cfg.name, result.steps, result.seconds, result.tokens_per_second)
    return result


def generate_split(ctx: RunContext, split: str) -> list[str]:
    examples = ctx.splits[split]
    features = ctx.family.build_features(ctx.cfg, ctx.tok, examples, with_labels=False)
    with tqdm(total=len(examples), desc=f"{ctx.cfg.name} {split}", unit="dlg", leave=False, disable=None) as bar:
        return ctx.family.generate(ctx.cfg, ctx.model, ctx.tok, features, progress=bar)


def dev_score(ctx: RunContext, predictions: list[str] | None = None) -> dict:
    predictions = predictions if predictions is not None else generate_split(ctx, "dev")
    return metric.score(predictions, [ex.summary for ex in ctx.splits["dev"]])


def predict(ctx: RunContext, out_dir: Path) -> dict[str, list[str]]:
    """Generate dev and test (when present) and write submission-shaped CSVs under out_dir/predictions."""
    preds = {}
    for split in ("dev", "test"):
        if split in ctx.splits:
            preds[split] = generate_split(ctx, split)
            write_submission(out_dir / "predictions" / f"{split}.csv", [e.fname for e in ctx.splits[split]], preds[split])
    return preds


def score_phase(ctx: RunContext, preds: dict[str, list[str]], extra: dict) -> dict:
    metrics = {"model": ctx.cfg.name, "type": ctx.cfg.type, "run_id": ctx.run_id, "dev": dev_score(ctx, preds["dev"])}
    metrics.update(extra)
    (ctx.work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    ctx.tracker.log({f"dev/{k}": v for k, v in metrics["dev"].items()})
    return metrics


def save_phase(ctx: RunContext) -> Path:
    """Save model/adapter, tokenizer and resolved config, then move the folder into place."""
    ctx.family.save(ctx.model, ctx.tok, ctx.work_dir / "model")
    (ctx.work_dir / "config.yaml").write_text(dump_config(ctx.cfg), encoding="utf-8")
    final = ctx.work_dir.parent / ctx.cfg.name
    shutil.rmtree(final, ignore_errors=True)
    ctx.work_dir.rename(final)
    return final


def loss_curve(losses: list[float], points: int = 500) -> list[float]:
    """The training loss per optimizer step, averaged into at most `points` buckets for the report."""
    if len(losses) <= points:
        return [round(x, 5) for x in losses]
    size = len(losses) / points
    buckets = [losses[int(i * size): int((i + 1) * size)] for i in range(points)]
    return [round(sum(b) / len(b), 5) for b in buckets if b]


def run_facts(ctx: RunContext) -> dict:
    """What decides whether a later run would be identical: dev data, code, debug (see `datasource`)."""
    from dialsum.datasource import code_fingerprint

    return {"dev_sha256": ctx.dev_hash, "code_sha256": code_fingerprint(), "debug": ctx.debug}


def publish_phase(ctx: RunContext, run_dir: Path, storage_url: str | None, force: bool) -> str:
    from dialsum import storage

    config_hash = hashlib.sha256(dump_config(ctx.cfg).encode()).hexdigest()
    result = storage.publish(run_dir, ctx.run_id, ctx.cfg.name, storage=storage.open_storage(storage_url),
                             extra={"config_sha256": config_hash, "data_sha256": ctx.data_hash, "type": ctx.cfg.type,
                                    **run_facts(ctx)},
                             force=force)
    return result.url


def run_model(
    model_name: str, run_id: str | None = None, data_dir: Path | None = None, debug: bool = False,
    eval_before: bool = False, storage_url: str | None = None, publish: bool = True, force: bool = False,
    group: str | None = None,
) -> RunResult:
    """Train, predict, score and publish one model; the single entry point every caller uses."""
    run_id = run_id or new_run_id()
    started = time.perf_counter()
    ctx = setup(model_name, run_id, data_dir, debug, group)
    try:
        before = dev_score(ctx)["score"] if eval_before else None
        fitted = fit_phase(ctx)
        preds = predict(ctx, ctx.work_dir)
        extra = {"dev_score_before": before, "train_steps": fitted.steps, "train_seconds": round(fitted.seconds, 2),
                 "train_tokens_per_second": round(fitted.tokens_per_second, 1), "debug": debug,
                 "seconds": round(time.perf_counter() - started, 2), "train_losses": loss_curve(fitted.losses)}
        metrics = score_phase(ctx, preds, extra)
        run_dir = save_phase(ctx)
        location = publish_phase(ctx, run_dir, storage_url, force) if publish else None
    except BaseException:
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        ctx.tracker.finish(failed=True)
        raise
    ctx.tracker.finish({"dev_score": metrics["dev"]["score"]})
    return RunResult(ctx.cfg.name, ctx.cfg.type, run_id, run_dir, metrics, location)


def predict_run(run_dir: Path, data_dir: Path | None = None, out_dir: Path | None = None) -> dict:
    """Predict dev/test with a saved run folder; writes predictions and returns the dev scores (if any)."""
    cfg = load_model_config(str(run_dir / "config.yaml"))
    splits = load_splits(data_dir, splits=("dev", "test"), optional=("dev", "test"))
    if not splits:
        raise DataError(f"{data_dir or sample_dir()}: neither dev.csv nor test.csv found")
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(sum(splits.values(), [])), adapter=run_dir / "model")
    model.to(device())
    ctx = RunContext(cfg, fam, model, tok, splits, run_dir.parent.name, run_dir, "")
    preds = predict(ctx, out_dir or run_dir)
    return dev_score(ctx, preds["dev"]) if "dev" in preds else {}
