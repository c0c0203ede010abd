"""Training throughput (real tokens/s): micro-batches cut by a token budget (ours) vs a fixed batch size
(baseline), both length-grouped, for the same rows, one epoch each, through the QLoRA path.

Rows follow the competition length profile: every third ../shared dev.csv row (all 499 are too slow on CPU),
as qwen3-4b chat prompts plus summaries from the real Qwen3 tokenizer. The model is Qwen3-shaped with random
weights (SHAPE: hidden 64, 2 layers) and the real 151,936-row vocabulary, loaded through `causal_lm.load` with
the qwen3-4b config: NF4 base, LoRA on all projections, label-only output layer, fp32 compute on CPU, with
glibc keeping freed memory as CPU runs do (`host_memory.keep_freed_memory`; bench/host_memory.py).

Both variants get the same memory bound: ours is the qwen3-4b config's `max_tokens_per_batch`, and the
baseline's fixed batch size is the most rows that keep the longest micro-batch within it (budget // longest
row), which is how a fixed batch size must be chosen so that the longest batch fits. The seed recipe's 8 rows
(which overshoots the bound on the longest rows) is measured too and reported in details.

What this shows on CPU: the budget cuts the step count by the length profile's spread, but a CPU step's cost
is almost all per token (the 151,936-row output layer at label positions, attention, matrix products), so the
variants nearly tie. The gain the budget is for, fuller micro-batches on a GPU that a fixed batch size leaves
idle, is measured by bench/gpu/run.py on a Qwen3-4B shape.

Each variant starts from the same LoRA init after one untimed warm-up step; variants alternate for ROUNDS
rounds, best counts. CPU threads: BENCH_THREADS (default 1). Needs ../shared; skips (exit 0) without it.
Writes bench/results/token_budget_throughput.json.

Usage: .venv/bin/python bench/token_budget_throughput.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

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

SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": sized(2, 1),
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
}
EVERY = sized(3, 125)
ROUNDS = sized(2, 1)


def load(shared: Path, examples):
    from transformers import AutoTokenizer

    from dialsum.data import placeholders_in
    from dialsum.models import causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        save_random_lm("qwen3", SHAPE, AutoTokenizer.from_pretrained(shared / QWEN3), Path(tmp))
        cfg = causal_config(
            "qwen3-4b",
            Path(tmp),
            quantization={"compute_dtype": "float32"},
            training={"precision": "fp32", "grad_accum": 1, "gradient_checkpointing": False},
        )
        model, tok = causal_lm.load(cfg, tmp, placeholders_in(examples))
    return cfg, model, tok


def run(cfg, model, tok, features, state, **training):
    from dialsum.engine.trainer import fit
    from dialsum.models import causal_lm

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])
    t = cfg.training.model_copy(update=training)
    return fit(t, causal_lm, model, tok, features, show_progress=False)


def main() -> None:
    shared = require_shared("token_budget_throughput")
    use_repo_configs()
    threads = cpu_threads()
    from dialsum.engine import host_memory
    from dialsum.engine.trainer import fit
    from dialsum.models import causal_lm

    kept = host_memory.keep_freed_memory()
    examples = dev_examples(shared)[::EVERY]
    cfg, model, tok = load(shared, examples)
    features = causal_lm.build_features(cfg, tok, examples, with_labels=True)
    budget = cfg.training.max_tokens_per_batch
    longest = max(len(f["input_ids"]) for f in features)
    fixed = max(1, budget // longest)
    variants = {
        "baseline": {"max_tokens_per_batch": None, "batch_size": fixed, "epochs": 1},
        "ours": {"max_tokens_per_batch": budget, "epochs": 1},
        "seed_8_rows": {"max_tokens_per_batch": None, "batch_size": 8, "epochs": 1},
    }
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for v in variants.values():  # one untimed warm-up step per variant
        fit(cfg.training.model_copy(update=v), causal_lm, model, tok, features, max_steps=1, show_progress=False)
    rounds = [{k: run(cfg, model, tok, features, state, **v) for k, v in variants.items()} for _ in range(ROUNDS)]
    best = {k: min((r[k] for r in rounds), key=lambda x: x.seconds) for k in variants}
    ours, base, seed = best["ours"], best["baseline"], best["seed_8_rows"]
    assert ours.real_tokens == base.real_tokens == seed.real_tokens, "every variant must see the same rows"
    o, b = ours.tokens_per_second, base.tokens_per_second
    lengths = sorted(len(f["input_ids"]) for f in features)
    write_result(
        "token_budget_throughput",
        "real tokens/s",
        round(o, 1),
        round(b, 1),
        round(o / b, 2),
        "ratio >= 1.3",
        details={
            "data": f"shared dev.csv, every {EVERY}rd row ({len(features)}), qwen3-4b chat prompts + summaries, "
            "real Qwen3 tokenizer",
            "row_tokens": {
                "mean": round(sum(lengths) / len(lengths), 1),
                "median": lengths[len(lengths) // 2],
                "max": longest,
            },
            "ours": f"fit(): max_tokens_per_batch {budget} (the qwen3-4b config; length-grouped token budget)",
            "baseline": f"fit(): length-grouped batches of {fixed} rows (= {budget} // longest row {longest})",
            "seed_8_rows": {
                "tokens_per_second": round(seed.tokens_per_second, 1),
                "ratio_ours_to_it": round(o / seed.tokens_per_second, 2),
                "steps": seed.steps,
                "longest_micro_batch_tokens": 8 * longest,
            },
            "steps": {"ours": ours.steps, "baseline": base.steps},
            "real_tokens": ours.real_tokens,
            "padded_share_pct": {"ours": _share(ours), "baseline": _share(base)},
            "model": "Qwen3-shaped, random weights, real 151,936-row vocabulary, NF4 base + LoRA via causal_lm.load",
            "shape": SHAPE,
            "compute": "fp32 on CPU (4-bit compute dtype float32)",
            "grad_accum": 1,
            "host_memory_kept": kept,
            "seconds": {k: [round(r[k].seconds, 2) for r in rounds] for k in variants},
            "rounds": ROUNDS,
            "threads": threads,
            "device": device_info(),
        },
    )


def _share(result) -> float:
    return round(100 * (1 - result.real_tokens / result.padded_tokens), 2)


if __name__ == "__main__":
    main()
