"""A run of a generate-only family (a `Summarizer` that is not `Trainable`, e.g. a chat model behind an API):
setup → predict → score → save → publish, with no weights, hub lookup, checkpointer or fit. Torch-free: an
API-only run never imports torch, peft or bitsandbytes.

The family's response cache lives in the run's state folder (`.<model>.state/responses.jsonl`), written as each
response arrives, so a killed run resumed pays again only for the requests that were in flight; the finished run
folder carries a copy (`responses.jsonl`, published with it), and a rerun with the same run id seeds its cache
from there. Rows that fail after their retries are recorded (`predictions/<split>_rows.jsonl`, with the error and
the example fnames the prompt used) and counted in metrics.json; more failures than the profile allows
(`max_failed_rows`) fail the run, and so does reaching the cost budget, with every response paid for kept.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from dialsum import console, metric
from dialsum.config import dump_config
from dialsum.config.chat_api import RUN_CONTROL
from dialsum.data import candidates_path, load_splits, write_candidates, write_submission
from dialsum.data.source import code_fingerprint, config_fingerprint, data_fingerprint, dev_fingerprint
from dialsum.errors import DialsumError
from dialsum.models import families
from dialsum.settings import get_settings
from dialsum.state import runs, stop
from dialsum.state.phases import Phases

log = logging.getLogger(__name__)
CACHE_FILE = "responses.jsonl"


def fingerprint(cfg, data_hash: str, debug: bool) -> str:
    """What a resumed run must share with the run it continues: config (prompt text and version included, the keys
    of RUN_CONTROL left out), data and debug mode."""
    import hashlib

    asked = json.dumps(cfg.model_dump(mode="json", exclude=RUN_CONTROL), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(f"{asked}\0{data_hash}\0{debug}".encode()).hexdigest()


def predict_split(cfg, fam, session, split: str, examples: list, folder: Path) -> list[str | None]:
    """The split's summaries (and candidates, with `num_candidates` > 1), its rows file, and its CSV."""
    with tqdm(
        total=len(examples), desc=console.bar_label(cfg.name, split), unit="dlg", leave=False, disable=None
    ) as bar:
        progress = stop.StoppingProgress(
            bar,
            f"{cfg.name}: stopped while predicting {split} (responses so far are "
            "cached; --resume pays only for the rest)",
        )
        if cfg.generation.num_candidates > 1:
            texts, candidates = fam.summarize_candidates(cfg, session, examples, progress=progress)
        else:
            texts, candidates = fam.summarize(cfg, session, examples, progress=progress), None
    folder.mkdir(parents=True, exist_ok=True)
    rows = [session.rows[ex.fname] for ex in examples]
    with open(folder / f"{split}_rows.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    check_rows(cfg, session, split, rows)
    fnames = [ex.fname for ex in examples]
    if candidates is not None:
        write_candidates(
            candidates_path(folder, split),
            fnames,
            [c or [{"text": "", "logprob": None, "tokens": 0}] for c in candidates],
        )
    write_submission(folder / f"{split}.csv", fnames, [t if t is not None else "" for t in texts])
    return texts


def check_rows(cfg, session, split: str, rows: list[dict]) -> None:
    """Fail on the budget, or on more failed rows than `max_failed_rows`; one line with the first errors."""
    failed = [r for r in rows if r["error"]]
    if session.budget_reached:
        raise DialsumError(
            f"{cfg.name}: stopped before passing the cost budget of ${cfg.max_cost_usd:g} "
            f"(spent ${session.stats.cost_usd:.4f}); {len(failed)} {split} rows not summarized. "
            "Every response paid for is cached: raise max_cost_usd and --resume this run"
        )
    total = sum(1 for r in session.rows.values() if r["error"])
    if total > cfg.max_failed_rows:
        first = "; ".join(f"{r['fname']}: {r['error']}" for r in failed[:3])
        raise DialsumError(
            f"{cfg.name}: {total} rows failed after retries (allowed: max_failed_rows="
            f"{cfg.max_failed_rows}), e.g. {first}; --resume retries only them"
        )
    if failed:
        log.warning(
            "%s: %d %s rows failed and are left empty (allowed: max_failed_rows=%d): %s",
            cfg.name,
            len(failed),
            split,
            cfg.max_failed_rows,
            ", ".join(r["fname"] for r in failed),
        )


def predict_and_score(cfg, splits: dict, run_id: str, work_dir: Path, state: Phases, extra: dict) -> dict:
    """Predict dev and test through the family's session, then write metrics.json and generation_config.json."""
    fam = families.of(cfg).load()
    seed_cache(state.folder / CACHE_FILE, work_dir.parent / cfg.name / CACHE_FILE)
    session = fam.open_session(cfg, splits["train"], state.folder / CACHE_FILE)
    preds = {
        s: predict_split(cfg, fam, session, s, splits[s], work_dir / "predictions")
        for s in ("dev", "test")
        if s in splits
    }
    dev = splits["dev"]
    texts = [t or "" for t in preds["dev"]]
    references = [ex.summary for ex in dev]
    score = metric.score(texts, references)
    api = {
        **session.stats.summary(),
        "failed_rows": sum(1 for r in session.rows.values() if r["error"]),
        "rows": len(session.rows),
        "cache_entries": len(session.cache),
    }
    metrics = {
        "model": cfg.name,
        "type": cfg.type,
        "run_id": run_id,
        "dev": score,
        "dev_held_out": {
            "score": score["score"],
            "rows": len(dev),
            "selection_rows": 0,
            "selected_by": "nothing chosen on dev (examples come from train)",
        },
        "dev_rows": len(dev),
        "dev_row_scores": dict(zip([ex.fname for ex in dev], metric.row_scores(texts, references))),
        "api": api,
        **extra,
    }
    log.info(
        "%s: %d requests, %d cache hits, %d retries, %d failed rows, %d/%d tokens in/out, $%.4f",
        cfg.name,
        api["requests"],
        api["cache_hits"],
        api["retries"],
        api["failed_rows"],
        api["tokens_in"],
        api["tokens_out"],
        api["cost_usd"],
    )
    (work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    (work_dir / "generation_config.json").write_text(
        json.dumps(fam.generation_settings(cfg, session), indent=2, ensure_ascii=False)
    )
    if (state.folder / CACHE_FILE).is_file():
        shutil.copyfile(state.folder / CACHE_FILE, work_dir / CACHE_FILE)
    return metrics


def seed_cache(cache: Path, earlier: Path) -> None:
    """Start a run's cache from the responses its finished run folder kept (a rerun with the same run id)."""
    if not cache.is_file() and earlier.is_file():
        shutil.copyfile(earlier, cache)


def run(
    cfg,
    run_id: str,
    data_dir: Path | None,
    debug: bool,
    publish: bool,
    storage_url: str | None,
    force: bool,
    store=None,
) -> tuple[dict, Path, str | None, Phases]:
    """The phases of a generate-only run, each skipped when an earlier attempt finished it; returns metrics, the
    run folder, where it was published (to `store`, else `storage_url`), and its state record (cleared by the caller
    when done)."""
    started = time.perf_counter()
    splits = load_splits(data_dir)
    get_settings().check_folders()
    if debug:
        splits = {k: v[: cfg.debug_rows] for k, v in splits.items()}
    data_hash = data_fingerprint(data_dir)
    state = Phases(runs.state_dir(run_id, cfg.name), fingerprint(cfg, data_hash, debug))
    work_dir = get_settings().output_dir / run_id / f".{cfg.name}.partial"
    final = work_dir.parent / cfg.name
    if (done := state.get("save")) is not None:
        metrics = done["metrics"]
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        extra = {
            "debug": debug,
            "base": {"model": cfg.model, "base_url": cfg.base_url, "revision": None, "commit": None},
        }
        metrics = predict_and_score(cfg, splits, run_id, work_dir, state, extra)
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        (work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        (work_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        state.mark("save", {"metrics": metrics})
    if work_dir.is_dir():
        shutil.rmtree(final, ignore_errors=True)
        work_dir.rename(final)
    location = None
    if publish:
        stop.check(f"{cfg.name}: stopped before publishing; its run folder {final} is complete")
        location = publish_run(cfg, run_id, final, storage_url, data_hash, data_dir, debug, force, store)
    return metrics, final, location, state


def publish_run(
    cfg,
    run_id: str,
    folder: Path,
    storage_url: str | None,
    data_hash: str,
    data_dir: Path | None,
    debug: bool,
    force: bool,
    store=None,
) -> str:
    from dialsum import storage

    extra = {
        "config_sha256": config_fingerprint(cfg),
        "data_sha256": data_hash,
        "type": cfg.type,
        "base_commit": None,
        "dev_sha256": dev_fingerprint(data_dir),
        "code_sha256": code_fingerprint(),
        "debug": debug,
    }
    return storage.publish(
        folder, run_id, cfg.name, storage=store or storage.open_storage(storage_url), extra=extra, force=force
    ).url


def predict_saved(run_dir: Path, data_dir: Path | None, out_dir: Path | None) -> dict:
    """`predict --run` with an API run folder: the same prompts (examples from the data's train.csv), answered from
    the folder's response cache where it can (new responses are added to it); returns the dev score, if any."""
    from dialsum.config import load_model_config

    cfg = load_model_config(str(run_dir / "config.yaml"))
    splits = load_splits(data_dir, splits=("train", "dev", "test"), optional=("dev", "test"))
    fam = families.of(cfg).load()
    session = fam.open_session(cfg, splits["train"], run_dir / CACHE_FILE)
    folder = (out_dir or run_dir) / "predictions"
    preds = {s: predict_split(cfg, fam, session, s, splits[s], folder) for s in ("dev", "test") if s in splits}
    stats = session.stats.summary()
    log.info(
        "%s: %d requests, %d answered from the cache, $%.4f",
        cfg.name,
        stats["requests"],
        stats["cache_hits"],
        stats["cost_usd"],
    )
    if "dev" not in preds:
        return {}
    return metric.score([t or "" for t in preds["dev"]], [ex.summary for ex in splits["dev"]])
