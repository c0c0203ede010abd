"""Predicting with a saved run folder (the CLI's `predict --run`, the champion, decoding search), on the base
commit the run trained on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from dialsum.config import load_model_config
from dialsum.data import load_splits, placeholders_in
from dialsum.data.source import read_splits
from dialsum.models import checkpoint_source, families, family, hub
from dialsum.pipeline.phases import RunContext, dev_score, device, predict

log = logging.getLogger(__name__)


def open_run(run_dir: Path, data_dir: Path | None = None, splits: Sequence[str] = ("dev",)) -> RunContext:
    """A saved run folder loaded for generation: its config, model (adapters applied) and tokenizer, with `splits`
    of `data_dir`; `ctx.cfg` may then be replaced by a variant (e.g. other generation settings)."""
    cfg = load_model_config(str(run_dir / "config.yaml"))
    data = load_splits(data_dir, splits=tuple(splits))
    fam = family(cfg)
    model, tok = fam.load(
        cfg, checkpoint_source(cfg), placeholders_in(sum(data.values(), [])), adapter=run_dir / "model"
    )
    model.to(device())
    return RunContext(cfg, fam, model, tok, data, run_dir.parent.name, run_dir, "")


def predict_run(run_dir: Path, data_dir: Path | None = None, out_dir: Path | None = None) -> dict:
    """Predict dev/test with a saved run folder, on the base commit the run trained on; writes predictions and
    returns the dev scores (if any)."""
    cfg = load_model_config(str(run_dir / "config.yaml"))
    if not families.trainable(cfg):
        from dialsum.pipeline import generate_only

        return generate_only.predict_saved(run_dir, data_dir, out_dir)
    splits = read_splits(data_dir, splits=("dev", "test"), optional=("dev", "test"))
    fam = family(cfg)
    commit = recorded_base(run_dir)
    model, tok = fam.load(
        hub.pinned(cfg, commit),
        checkpoint_source(cfg),
        placeholders_in(sum(splits.values(), [])),
        adapter=run_dir / "model",
    )
    model.to(device())
    ctx = RunContext(cfg, fam, model, tok, splits, run_dir.parent.name, run_dir, "", base_commit=commit)
    preds = predict(ctx, out_dir or run_dir)
    return dev_score(ctx, preds["dev"]) if "dev" in preds else {}


def recorded_base(run_dir: Path) -> str | None:
    """The base commit a saved run trained on (its metrics.json), or None (a local base, or an older run)."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return (metrics.get("base") or {}).get("commit")
