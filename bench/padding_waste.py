"""Padding waste: share of padded source positions on dev.csv with the real KoBART tokenizer, batch 16.

Ours: `length_grouped_batches` (default mega=50) with dynamic padding, as `fit` batches encoder-decoder
features. Baseline: every dialogue padded to the shipped config's max_source_length (1024; `padding="max_length"`),
with the former 512 reported in details. Random dynamic batches are reported in
details. Needs ../shared; skips (exit 0) without it. Writes bench/results/padding_waste.json.

Usage: .venv/bin/python bench/padding_waste.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import KOBART, dev_examples, device_info, require_shared, sized, use_repo_configs, write_result  # noqa: E402

BATCH = 16
SEEDS = range(42, sized(52, 44))
ROWS = sized(None, 64)  # None: all of dev.csv


def padded_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Percent of positions that are padding when each batch is padded to its longest row."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 100.0 * (1 - sum(lengths) / total)


def source_lengths(shared: Path, placeholders: bool = True) -> tuple[list[int], int]:
    from transformers import AutoTokenizer

    from dialsum.config import load_model_config
    from dialsum.data import placeholders_in
    from dialsum.models import encoder_decoder
    from dialsum.models.common import add_placeholder_tokens

    cfg = load_model_config("kobart")
    examples = dev_examples(shared, ROWS)
    tok = AutoTokenizer.from_pretrained(shared / KOBART)
    if placeholders:
        add_placeholder_tokens(tok, placeholders_in(examples))
    features = encoder_decoder.build_features(cfg, tok, examples, with_labels=False)
    return [len(f["input_ids"]) for f in features], cfg.max_source_length


def main() -> None:
    shared = require_shared("padding_waste")
    use_repo_configs()
    from dialsum.models.common import length_grouped_batches, random_batches

    lengths, width = source_lengths(shared)
    fixed = 100.0 * (1 - sum(lengths) / (len(lengths) * width))
    grouped = [padded_share(lengths, length_grouped_batches(lengths, BATCH, seed=s)) for s in SEEDS]
    shuffled = [padded_share(lengths, random_batches(len(lengths), BATCH, seed=s)) for s in SEEDS]
    ours = round(statistics.mean(grouped), 2)
    plain, _ = source_lengths(shared, placeholders=False)
    write_result(
        "padding_waste",
        "% padded",
        ours,
        round(fixed, 2),
        round(fixed / ours, 2),
        "ours <= 5",
        details={
            "data": "shared dev.csv, all rows",
            "rows": len(lengths),
            "batch_size": BATCH,
            "tokenizer": "real KoBART tokenizer + placeholder tokens, encoder_decoder.build_features",
            "positions": "encoder input (dialogue) positions; labels are padded per batch in both cases",
            "max_source_length": width,
            "mean_tokens": round(statistics.mean(lengths), 1),
            "max_tokens": max(lengths),
            "seeds": list(SEEDS),
            "grouped_per_seed": [round(g, 2) for g in grouped],
            "random_dynamic_batches": round(statistics.mean(shuffled), 2),
            "without_placeholder_tokens": {
                "mean_tokens": round(statistics.mean(plain), 1),
                "grouped": round(padded_share(plain, length_grouped_batches(plain, BATCH, seed=SEEDS[0])), 2),
                "fixed_width": round(100.0 * (1 - sum(plain) / (len(plain) * width)), 2),
            },
            "ours": "length_grouped_batches(mega=50), mean over seeds",
            "baseline": f"every row padded to {width}",
            "fixed_512": round(100.0 * (1 - sum(min(n, 512) for n in lengths) / (len(lengths) * 512)), 2),
            "device": device_info(),
        },
    )


if __name__ == "__main__":
    main()
