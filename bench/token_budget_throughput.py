"""Training throughput (real tokens/s): micro-batches cut by a token budget (ours) vs a fixed batch size
(baseline), both length-grouped, for the same rows, one epoch each, through the QLoRA path.

The two variants get the same memory bound: the budget is BUDGET padded tokens per micro-batch, and the fixed
batch size is the most rows that keep the longest micro-batch within that budget (BUDGET // longest row), which
is how a fixed batch size must be chosen so that the longest batch fits. Short rows then ride in small
batches; the budget packs them several-fold, so per-batch costs (4-bit dequantization of every weight, the
optimizer step, kernel launches) spread over more tokens.

Model: the tiny-llama-qlora profile (hidden 64, 2 layers, NF4 base, LoRA on all projections, its locally trained
tokenizer), fp32 compute on CPU. Measured here, the per-batch work (kernel dispatch, 4-bit dequantization, the
optimizer step) is a small share of a CPU step even at this size: 16 budget steps and 23 fixed-size steps take
about the same time, so on CPU the two batchings nearly tie. The gain the budget is for (fuller micro-batches on
a GPU that a fixed batch size leaves idle) needs the GPU script (bench/gpu/run.py). Rows: the first ROWS dev.csv
dialogues and summaries (prompts truncated to the profile's max_prompt_length). Each variant
starts from the same LoRA init after one untimed warm-up step; variants alternate for ROUNDS rounds, best
counts. CPU threads: BENCH_THREADS (default 1). Needs ../shared; skips (exit 0) without it. The GPU script
(bench/gpu/run.py) measures the same batching on a Qwen3-4B shape.
Writes bench/results/token_budget_throughput.json.

Usage: .venv/bin/python bench/token_budget_throughput.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    cpu_threads, dev_examples, device_info, require_shared, use_repo_configs, write_result,
)

ROWS = 160
BUDGET = 4096
ROUNDS = 2


def load(examples):
    from dialsum.config import deep_merge, load_model_config
    from dialsum.data import placeholders_in
    from dialsum.models import causal_lm, checkpoint_source

    cfg = load_model_config("tiny-llama-qlora")
    cfg = type(cfg).model_validate(deep_merge(cfg.model_dump(), {
        "quantization": {"compute_dtype": "float32"},
        "training": {"precision": "fp32", "grad_accum": 1, "gradient_checkpointing": False}}))
    model, tok = causal_lm.load(cfg, checkpoint_source(cfg), placeholders_in(examples))
    return cfg, model, tok


def run(cfg, model, tok, features, state, **training):
    from dialsum.models import causal_lm
    from dialsum.trainer import fit

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
    from dialsum.models import causal_lm
    from dialsum.trainer import fit

    examples = dev_examples(shared, ROWS)
    cfg, model, tok = load(examples)
    features = causal_lm.build_features(cfg, tok, examples, with_labels=True)
    longest = max(len(f["input_ids"]) for f in features)
    fixed = max(1, BUDGET // longest)
    variants = {"baseline": {"max_tokens_per_batch": None, "batch_size": fixed, "epochs": 1},
                "ours": {"max_tokens_per_batch": BUDGET, "epochs": 1}}
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for v in variants.values():  # one untimed warm-up step per variant
        fit(cfg.training.model_copy(update=v), causal_lm, model, tok, features, max_steps=1, show_progress=False)
    rounds = [{k: run(cfg, model, tok, features, state, **v) for k, v in variants.items()} for _ in range(ROUNDS)]
    ours, base = (min((r[k] for r in rounds), key=lambda x: x.seconds) for k in ("ours", "baseline"))
    assert ours.real_tokens == base.real_tokens, "both variants must see the same rows"
    o, b = ours.tokens_per_second, base.tokens_per_second
    lengths = [len(f["input_ids"]) for f in features]
    write_result(
        "token_budget_throughput", "real tokens/s", round(o, 1), round(b, 1), round(o / b, 2), "ratio >= 1.3",
        details={
            "data": f"shared dev.csv, first {ROWS} rows, tiny-llama-qlora chat prompts + summaries",
            "row_tokens": {"mean": round(sum(lengths) / len(lengths), 1), "max": longest},
            "ours": f"fit(): max_tokens_per_batch {BUDGET} (length-grouped token budget)",
            "baseline": f"fit(): length-grouped batches of {fixed} rows (= {BUDGET} // longest row {longest})",
            "steps": {"ours": ours.steps, "baseline": base.steps}, "real_tokens": ours.real_tokens,
            "padded_share_pct": {"ours": _share(ours), "baseline": _share(base)},
            "model": "tiny-llama-qlora (hidden 64, 2 layers), NF4 base + LoRA via causal_lm.load",
            "compute": "fp32 on CPU (4-bit compute dtype float32)", "grad_accum": 1,
            "seconds": {k: [round(r[k].seconds, 2) for r in rounds] for k in variants},
            "rounds": ROUNDS, "threads": threads, "device": device_info(),
        },
    )


def _share(result) -> float:
    return round(100 * (1 - result.real_tokens / result.padded_tokens), 2)


if __name__ == "__main__":
    main()
