"""Training throughput (real tokens/s) of a KoBART-shaped random model: `fit` with length grouping and dynamic
padding vs the same model, rows and steps with random batches padded to 512 source / 128 target tokens.

The model comes from shared kobart-tokenizer/config.json with random weights; on CPU it is shrunk (SHRINK) so
both variants finish in about three minutes on two cores. Both variants run one full epoch over the same
ROWS dev.csv rows (every batch full), from the same initial weights, after one untimed warm-up step each; the
variants alternate for ROUNDS rounds and the best round of each counts. CPU threads: BENCH_THREADS (default 1).
Needs ../shared; skips (exit 0) without it. Writes bench/results/train_throughput.json.

Usage: .venv/bin/python bench/train_throughput.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    KOBART,
    SMOKE,
    cpu_threads,
    dev_examples,
    device_info,
    fixed_padding,
    require_shared,
    sized,
    use_repo_configs,
    write_result,
)

ROWS = sized(160, 16)
ROUNDS = sized(2, 1)
SHRINK = {
    "d_model": sized(256, 32),
    "encoder_layers": sized(2, 1),
    "decoder_layers": sized(2, 1),
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": sized(1024, 64),
    "decoder_ffn_dim": sized(1024, 64),
}


def build_model(shared: Path, vocab: int, seed: int = 0):
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig.from_pretrained(shared / KOBART)
    if not torch.cuda.is_available():
        config.update(SHRINK)
    config.vocab_size = vocab
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(config)
    return model.to("cuda" if torch.cuda.is_available() else "cpu")


def prepare(shared: Path):
    from transformers import AutoTokenizer

    from dialsum.config import load_model_config
    from dialsum.data import placeholders_in
    from dialsum.models import encoder_decoder
    from dialsum.models.common import add_placeholder_tokens

    cfg = load_model_config("kobart")
    examples = dev_examples(shared, ROWS)
    tok = AutoTokenizer.from_pretrained(shared / KOBART)
    add_placeholder_tokens(tok, placeholders_in(examples))
    return cfg, tok, encoder_decoder.build_features(cfg, tok, examples, with_labels=True)


def run(shared: Path, cfg, tok, features, family, grouped: bool):
    from dialsum.engine.trainer import fit

    t = cfg.training.model_copy(update={"group_by_length": grouped})
    model = build_model(shared, len(tok))
    return fit(t, family, model, tok, features, max_steps=len(features) // t.batch_size, show_progress=False)


def main() -> None:
    shared = require_shared("train_throughput")
    use_repo_configs()
    threads = cpu_threads()
    from dialsum.models import encoder_decoder

    cfg, tok, features = prepare(shared)
    widths = {
        "input_ids": cfg.max_source_length,
        "attention_mask": cfg.max_source_length,
        "labels": cfg.max_target_length,
    }
    variants = {"baseline": (fixed_padding(encoder_decoder, widths), False), "ours": (encoder_decoder, True)}
    for family, grouped in variants.values() if not SMOKE else ():  # untimed warm-up
        run(shared, cfg, tok, features[: cfg.training.batch_size], family, grouped)
    rounds = [{k: run(shared, cfg, tok, features, *v) for k, v in variants.items()} for _ in range(ROUNDS)]
    ours, base = (min((r[k] for r in rounds), key=lambda x: x.seconds) for k in ("ours", "baseline"))
    assert ours.real_tokens == base.real_tokens, "both variants must see the same rows"
    o, b = ours.tokens_per_second, base.tokens_per_second
    shape = {k: v for k, v in build_model(shared, len(tok)).config.to_dict().items() if k in {*SHRINK, "vocab_size"}}
    write_result(
        "train_throughput",
        "real tokens/s",
        round(o, 1),
        round(b, 1),
        round(o / b, 2),
        "ratio >= 2",
        details={
            "data": f"shared dev.csv, first {ROWS} rows, one epoch, batch {cfg.training.batch_size}",
            "model": "BartForConditionalGeneration from kobart config.json, random weights",
            "shape": shape,
            "shrunk_for_cpu": not torch.cuda.is_available(),
            "steps": ours.steps,
            "real_tokens": ours.real_tokens,
            "rounds": ROUNDS,
            "threads": threads,
            "seconds": {k: [round(r[k].seconds, 2) for r in rounds] for k in variants},
            "padded_share_pct": {"ours": _share(ours), "baseline": _share(base)},
            "ours": "fit(): length_grouped_batches + dynamic padding",
            "baseline": "fit(): random batches, source padded to 512 and labels to 128",
            "real_tokens_counted": "encoder attention-mask ones (fit's count)",
            "precision": "fp32 (autocast off on CPU)" if not torch.cuda.is_available() else cfg.training.precision,
            "device": device_info(),
        },
    )


def _share(result) -> float:
    return round(100 * (1 - result.real_tokens / result.padded_tokens), 2)


if __name__ == "__main__":
    main()
