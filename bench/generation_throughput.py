"""Causal-LM generation throughput (samples/s): `causal_lm.generate` in length-sorted, left-padded batches of
BATCH vs the same call with batch_size 1, on the same PROMPTS dev.csv dialogues.

A small Qwen3-shaped model (SHAPE, random weights, the real 151,936-row vocabulary) is saved with the real
Qwen3 tokenizer and chat template from ../shared and loaded through `causal_lm.load` (fp32, no 4-bit on
CPU). Greedy, MAX_NEW tokens each: `min_new_tokens` is set to the same value on the model's generation config,
so no sequence stops early and both ways decode the same number of tokens. Best of ROUNDS alternating rounds.
CPU threads: BENCH_THREADS (default 1). Needs ../shared; skips (exit 0) without it.
Writes bench/results/generation_throughput.json.

Usage: .venv/bin/python bench/generation_throughput.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    QWEN3,
    causal_config,
    cpu_threads,
    dev_examples,
    device_info,
    require_shared,
    save_random_lm,
    sized,
    use_repo_configs,
    write_result,
)

PROMPTS = sized(32, 4)
BATCH = sized(16, 2)
MAX_NEW = sized(32, 4)
ROUNDS = sized(2, 1)
SHAPE = {
    "hidden_size": sized(256, 32),
    "num_hidden_layers": sized(4, 1),
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": sized(64, 8),
    "intermediate_size": sized(768, 64),
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
}


def load_model(shared: Path, folder: Path, examples):
    from dialsum.data import placeholders_in
    from dialsum.models import causal_lm

    tok = AutoTokenizer.from_pretrained(shared / QWEN3)
    save_random_lm("qwen3", SHAPE, tok, folder)
    cfg = causal_config(
        "qwen3-4b",
        folder,
        quantization=None,
        lora=None,
        generation={"batch_size": BATCH, "max_new_tokens": MAX_NEW, "num_beams": 1},
    )
    model, tok = causal_lm.load(cfg, str(folder), placeholders_in(examples))
    model.generation_config.min_new_tokens = MAX_NEW
    return cfg, model, tok


def timed(cfg, model, tok, features, batch_size: int) -> float:
    from dialsum.models import causal_lm

    cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"batch_size": batch_size})})
    start = time.perf_counter()
    causal_lm.generate(cfg, model, tok, features)
    return time.perf_counter() - start


def main() -> None:
    shared = require_shared("generation_throughput")
    use_repo_configs()
    threads = cpu_threads()
    from dialsum.models import causal_lm

    examples = dev_examples(shared, PROMPTS)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, model, tok = load_model(shared, Path(tmp), examples)
    features = causal_lm.build_features(cfg, tok, examples, with_labels=False)
    timed(cfg, model, tok, features[:BATCH], BATCH)
    rounds = [
        {"baseline": timed(cfg, model, tok, features, 1), "ours": timed(cfg, model, tok, features, BATCH)}
        for _ in range(ROUNDS)
    ]
    ours, base = (PROMPTS / min(r[k] for r in rounds) for k in ("ours", "baseline"))
    lengths = [len(f["input_ids"]) for f in features]
    write_result(
        "generation_throughput",
        "samples/s",
        round(ours, 3),
        round(base, 3),
        round(ours / base, 2),
        "ratio >= 5",
        details={
            "data": f"shared dev.csv, first {PROMPTS} dialogues, qwen3-4b chat prompt via causal_lm.build_features",
            "prompt_tokens": {"mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
            "model": "Qwen3ForCausalLM, random weights, real Qwen3 tokenizer + chat template",
            "shape": SHAPE,
            "ours": f"causal_lm.generate, batch_size {BATCH} (length-sorted, left padding)",
            "baseline": "causal_lm.generate, batch_size 1",
            "decoding": f"greedy, max_new_tokens = min_new_tokens = {MAX_NEW}",
            "seconds": {k: [round(r[k], 2) for r in rounds] for k in ("baseline", "ours")},
            "rounds": ROUNDS,
            "threads": threads,
            "dtype": "float32",
            "device": device_info(),
        },
    )


if __name__ == "__main__":
    main()
