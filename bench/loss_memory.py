"""Peak memory of one causal-LM training step: label-only output layer (ours) vs full-vocabulary logits (baseline).

A small Qwen3-shaped model (SHAPE: hidden 256, 2 layers, random weights) keeps the real 151,936-row vocabulary,
so the output layer weighs as it does in Qwen3. Rows are ../shared dev.csv dialogues with their summaries, as
qwen3-4b chat prompts from the real Qwen3 tokenizer; the step is `fit` for one optimizer step on the longest
micro-batch that the qwen3-4b config's token budget (max_tokens_per_batch) cuts from them. Ours is
`causal_lm.loss`; the baseline is the former loss: the model's full logits, upcast to fp32, then cross-entropy.

Each variant runs in a fresh subprocess. Peak memory is the process's resident-set high-water mark (VmHWM),
reset (/proc/self/clear_refs) after the model and batch are built, minus the resident set at that moment: the
memory the step itself added (activations, logits, gradients, optimizer state), whatever allocated it.
CPU threads: BENCH_THREADS (default 2). Needs ../shared and Linux /proc; skips (exit 0) without them.
Writes bench/results/loss_memory.json.

Usage: .venv/bin/python bench/loss_memory.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    QWEN3,
    causal_config,
    cpu_threads,
    dev_examples,
    device_info,
    full_logits_loss,
    require_shared,
    run_variant,
    save_random_lm,
    sized,
    use_repo_configs,
    variant_arg,
    write_result,
)

SHAPE = {
    "hidden_size": sized(256, 32),
    "num_hidden_layers": sized(2, 1),
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": sized(64, 8),
    "intermediate_size": sized(768, 64),
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
}
ROWS = sized(200, 2)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def full_logits_family():
    """causal_lm with the former loss: logits at every position over the whole vocabulary, then fp32."""
    from dialsum.models import causal_lm

    return SimpleNamespace(collate=causal_lm.collate, target_count=causal_lm.target_count, loss=full_logits_loss)


def step(variant: str, shared: Path) -> dict:
    """One training step in this process; returns the step's peak added memory and the batch's shape."""
    from transformers import AutoTokenizer

    from dialsum.data import placeholders_in
    from dialsum.engine.trainer import _batches, fit
    from dialsum.models import causal_lm

    examples = dev_examples(shared, ROWS)
    with tempfile.TemporaryDirectory() as tmp:
        save_random_lm("qwen3", SHAPE, AutoTokenizer.from_pretrained(shared / QWEN3), Path(tmp))
        cfg = causal_config("qwen3-4b", Path(tmp), quantization=None, lora=None, training={"precision": "fp32"})
        model, tok = causal_lm.load(cfg, tmp, placeholders_in(examples))
    t = cfg.training.model_copy(update={"grad_accum": 1, "gradient_checkpointing": False})
    features = causal_lm.build_features(cfg, tok, examples, with_labels=True)
    rows = _batches(features, t, epoch=0)[0]  # the longest rows come first
    batch = [features[i] for i in rows]
    family = causal_lm if variant == "ours" else full_logits_family()
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    fit(t, family, model, tok, batch, max_steps=1, show_progress=False)
    peak = _rss_kib("VmHWM") - before
    width = max(len(f["input_ids"]) for f in batch)
    labels = sum(sum(1 for x in f["labels"][1:] if x != -100) for f in batch)
    return {
        "peak_mib": round(peak / 1024, 1),
        "rows": len(batch),
        "width": width,
        "label_tokens": labels,
        "padded_tokens": len(batch) * width,
    }


def main() -> None:
    shared = require_shared("loss_memory")
    if not Path("/proc/self/clear_refs").exists():
        print("loss_memory: skipped, needs Linux /proc")
        sys.exit(0)
    use_repo_configs()
    if (variant := variant_arg()) is not None:
        cpu_threads(2)
        print(json.dumps(step(variant, shared)))
        return
    runs, seconds = {}, {}
    for variant in ("baseline", "ours"):
        started = time.perf_counter()
        runs[variant] = run_variant(__file__, variant, lambda v: step(v, shared))
        seconds[variant] = round(time.perf_counter() - started, 1)
    o, b = runs["ours"]["peak_mib"], runs["baseline"]["peak_mib"]
    batch = {k: v for k, v in runs["ours"].items() if k != "peak_mib"}
    write_result(
        "loss_memory",
        "MiB peak added by one training step",
        o,
        b,
        round(o / b, 3),
        "ratio <= 0.33",
        details={
            "data": f"shared dev.csv, first {ROWS} rows, qwen3-4b chat prompts, real Qwen3 tokenizer",
            "batch": batch,
            "label_share_pct": round(100 * batch["label_tokens"] / batch["padded_tokens"], 1),
            "batching": "the longest micro-batch of the qwen3-4b token budget (max_tokens_per_batch)",
            "model": "Qwen3ForCausalLM, random weights, real 151,936-row vocabulary, fp32, all weights trainable",
            "shape": SHAPE,
            "step": "fit(max_steps=1): forward, backward, AdamW step",
            "ours": "causal_lm.loss: hidden states, output layer and fp32 cross-entropy at label positions only",
            "baseline": "full logits (batch x length x vocabulary), upcast to fp32, cross-entropy over labels",
            "measure": "VmHWM after /proc/self/clear_refs reset minus VmRSS before the step, fresh process each",
            "seconds": seconds,
            "device": device_info(),
        },
    )


if __name__ == "__main__":
    main()
