"""Generation throughput (samples/s) with LoRA merged into a dense copy (ours) vs the unmerged 4-bit model
(baseline), tiny-llama-qlora profile, same prompts.

The profile's model (hidden 64, 2 layers, NF4 base, LoRA on all seven projections) is loaded through
`causal_lm.load` with its LoRA B matrices randomised, so the adapter is not a no-op. Ours is
`causal_lm.inference_model` (a dense fp32 copy on CPU, bf16 on GPU, LoRA folded in) then `causal_lm.generate`;
the baseline is `causal_lm.generate` on the PEFT model itself. Greedy, MAX_NEW tokens each (`min_new_tokens` is
set to the same value, so both decode the same number of tokens), PROMPTS bundled dev dialogues, batch BATCH.
Best of ROUNDS alternating rounds; the merge itself is timed separately. CPU threads: BENCH_THREADS (default 1).
Writes bench/results/merged_generation.json.

Usage: .venv/bin/python bench/merged_generation.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_threads, device_info, sized, use_repo_configs, write_result  # noqa: E402

PROMPTS = sized(48, 4)
BATCH = sized(16, 4)
MAX_NEW = sized(32, 4)
ROUNDS = sized(2, 1)


def load():
    from dialsum.config import load_model_config
    from dialsum.data import load_splits, placeholders_in
    from dialsum.models import causal_lm, checkpoint_source

    cfg = load_model_config("tiny-llama-qlora")
    gen = cfg.generation.model_copy(update={"batch_size": BATCH, "max_new_tokens": MAX_NEW})
    cfg = cfg.model_copy(update={"generation": gen})
    splits = load_splits(None)
    model, tok = causal_lm.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.generation_config.min_new_tokens = MAX_NEW
    features = causal_lm.build_features(cfg, tok, splits["dev"][:PROMPTS], with_labels=False)
    return cfg, model, tok, features


def timed(cfg, model, tok, features) -> tuple[float, list[str]]:
    from dialsum.models import causal_lm

    start = time.perf_counter()
    out = causal_lm.generate(cfg, model, tok, features)
    return time.perf_counter() - start, out


def main() -> None:
    use_repo_configs()
    threads = cpu_threads()
    from dialsum.models import causal_lm

    cfg, model, tok, features = load()
    started = time.perf_counter()
    dense = causal_lm.inference_model(cfg, model)
    merge_seconds = time.perf_counter() - started
    assert dense is not model, "the dense copy must fit here"
    dense.generation_config.min_new_tokens = MAX_NEW
    variants = {"baseline": model, "ours": dense}
    for m in variants.values():
        timed(cfg, m, tok, features[:BATCH])
    rounds = [{k: timed(cfg, m, tok, features) for k, m in variants.items()} for _ in range(ROUNDS)]
    ours, base = (PROMPTS / min(r[k][0] for r in rounds) for k in ("ours", "baseline"))
    same = all(r["ours"][1] == r["baseline"][1] for r in rounds)
    write_result(
        "merged_generation",
        "samples/s",
        round(ours, 3),
        round(base, 3),
        round(ours / base, 2),
        "report the ratio (GPU goal: >= 25 samples/s for Qwen3-4B, bench/gpu)",
        details={
            "data": f"bundled sample dev.csv, first {PROMPTS} dialogues, tiny-llama-qlora chat prompts",
            "model": "tiny-llama-qlora: Llama hidden 64, 2 layers, NF4 base, LoRA (B randomised) on 7 projections",
            "ours": "causal_lm.inference_model (dense merged copy, fp32 on CPU) + causal_lm.generate",
            "baseline": "causal_lm.generate on the unmerged PEFT model over the 4-bit base",
            "decoding": f"greedy, batch {BATCH}, max_new_tokens = min_new_tokens = {MAX_NEW}",
            "same_outputs": same,
            "merge_seconds": round(merge_seconds, 3),
            "seconds": {k: [round(r[k][0], 2) for r in rounds] for k in variants},
            "rounds": ROUNDS,
            "threads": threads,
            "device": device_info(),
        },
    )


if __name__ == "__main__":
    main()
