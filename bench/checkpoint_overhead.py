"""Checkpoint overhead: training time spent on checkpoints at the default `checkpoint_every`, as a share of a run.

The same `fit` runs `checkpoint_every` optimizer steps (the default, from TrainingConfig) twice from the same
initial weights: once with checkpoints (written atomically and published to a local storage folder, the newest
`keep_checkpoints` kept), once without. The training rows are the bundled sample's train split, repeated so that
no epoch ends inside the window (an epoch end adds its own checkpoint; a real epoch is hundreds of steps). The
model is the tiny-bart profile (full fine-tuning: weights plus two AdamW moments per parameter are written).
The variants alternate for ROUNDS rounds (each going first in turn) and the best round of each counts.

ours: the time spent inside the checkpoint calls (write, publish, prune: synchronous, the only work checkpointing
adds to the loop) as a percentage of the same run's time without checkpoints. The wall-clock difference between
the two runs is reported beside it; on a shared box it is dominated by other load. CPU threads: BENCH_THREADS
(default 1).
Writes bench/results/checkpoint_overhead.json.

Usage: .venv/bin/python bench/checkpoint_overhead.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_threads, device_info, sized, use_repo_configs, write_result  # noqa: E402

ROUNDS = sized(2, 1)
EVERY = sized(None, 3)  # None: the default checkpoint_every
PROFILE = "tiny-bart"


def prepare():
    from dialsum.config import TrainingConfig, load_model_config
    from dialsum.data import load_splits, placeholders_in
    from dialsum.models import checkpoint_source, family

    cfg = load_model_config(PROFILE)
    every = EVERY or TrainingConfig().checkpoint_every
    t = cfg.training.model_copy(update={"checkpoint_every": every})
    splits = load_splits(None)
    fam = family(cfg)
    _, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"] + splits["dev"]))
    features = fam.build_features(cfg, tok, splits["train"], with_labels=True)
    repeats = -(-(every + 1) * t.batch_size // len(features))
    return cfg, t, fam, tok, features * repeats, placeholders_in(splits["train"] + splits["dev"])


def run(cfg, t, fam, tok, features, placeholders, checkpoints: bool) -> tuple[float, float, int]:
    """One run of `checkpoint_every` steps; returns (wall seconds of fit, seconds inside checkpoints, checkpoints)."""
    from dialsum.engine.checkpoint import Checkpointer
    from dialsum.engine.trainer import fit
    from dialsum.models import checkpoint_source
    from dialsum.storage import LocalStorage

    model, _ = fam.load(cfg, checkpoint_source(cfg), placeholders)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = (
            Checkpointer(
                Path(tmp) / "ckpt",
                t.checkpoint_every,
                t.keep_checkpoints,
                "bench",
                "bench",
                PROFILE,
                LocalStorage(Path(tmp) / "store"),
            )
            if checkpoints
            else None
        )
        started = time.perf_counter()
        fit(t, fam, model, tok, features, max_steps=t.checkpoint_every, show_progress=False, checkpoints=ckpt)
        seconds = time.perf_counter() - started
    return seconds, ckpt.seconds if ckpt else 0.0, ckpt.saved if ckpt else 0


def main() -> None:
    use_repo_configs()
    threads = cpu_threads()
    cfg, t, fam, tok, features, placeholders = prepare()
    order = [("with", True), ("without", False)]
    rounds = [
        {name: run(cfg, t, fam, tok, features, placeholders, on) for name, on in order[:: 1 - 2 * (i % 2)]}
        for i in range(ROUNDS)
    ]
    with_ckpt = min((r["with"] for r in rounds), key=lambda x: x[0])
    without = min(r["without"][0] for r in rounds)
    share = round(100 * with_ckpt[1] / without, 2)
    write_result(
        "checkpoint_overhead",
        "% of training time",
        share,
        0.0,
        round((without + with_ckpt[1]) / without, 4),
        "ours <= 3",
        details={
            "model": f"{PROFILE} profile, full fine-tuning (weights + AdamW state in every checkpoint)",
            "checkpoint_every": t.checkpoint_every,
            "steps": t.checkpoint_every,
            "batch_size": t.batch_size,
            "checkpoints_written": with_ckpt[2],
            "seconds_inside_checkpoints": round(with_ckpt[1], 3),
            "wall_clock_difference_pct": round(100 * (with_ckpt[0] - without) / without, 2),
            "seconds": {
                "with": [round(r["with"][0], 2) for r in rounds],
                "without": [round(r["without"][0], 2) for r in rounds],
            },
            "storage": "local folder (atomic write, verified copy, manifest last)",
            "baseline": "the same fit without checkpoints (ours is the time inside checkpoint calls in percent of it)",
            "threads": threads,
            "device": device_info(),
        },
    )


if __name__ == "__main__":
    main()
