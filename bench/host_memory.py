"""CPU training speed with glibc keeping freed memory (ours, `host_memory.keep_freed_memory`) against glibc's
defaults (baseline), each in a fresh process, same model, rows and steps.

The model and rows are token_budget_throughput's: a Qwen3-shaped model (hidden 64, 2 layers, random weights,
the real 151,936-row vocabulary) through the qwen3-4b QLoRA path (NF4 base, LoRA, label-only output layer,
fp32 compute), every third ../shared dev.csv row as qwen3-4b chat prompts, micro-batches of the config's
token budget. Each process trains one untimed warm-up step, then STEPS steps, timed; it reports real tokens/s,
the process's user and system CPU seconds over the timed steps, minor page faults, and its peak resident
memory (VmHWM). Variants alternate for ROUNDS rounds; best tokens/s counts. CPU threads: BENCH_THREADS (default 1).
Needs ../shared and Linux with glibc; skips (exit 0) without them. Writes bench/results/host_memory.json.

Usage: .venv/bin/python bench/host_memory.py
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    cpu_threads,
    dev_examples,
    device_info,
    require_shared,
    run_variant,
    sized,
    use_repo_configs,
    variant_arg,
    write_result,
)

STEPS = sized(8, 1)
ROUNDS = sized(2, 1)
EVERY = sized(3, 125)


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def measure(variant: str, shared: Path) -> dict:
    """One variant in this process: warm-up step, then STEPS timed steps."""
    from token_budget_throughput import load

    from dialsum.engine import host_memory
    from dialsum.engine.trainer import fit
    from dialsum.models import causal_lm

    if variant == "ours" and not host_memory.keep_freed_memory():
        raise SystemExit("host_memory: keep_freed_memory() did not apply")
    examples = dev_examples(shared)[::EVERY]
    cfg, model, tok = load(shared, examples)
    features = causal_lm.build_features(cfg, tok, examples, with_labels=True)
    t = cfg.training.model_copy(update={"epochs": 1})
    fit(t, causal_lm, model, tok, features, max_steps=1, show_progress=False)
    before, faults = os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    result = fit(t, causal_lm, model, tok, features, max_steps=STEPS, show_progress=False)
    after = os.times()
    return {
        "tokens_per_second": round(result.tokens_per_second, 1),
        "seconds": round(result.seconds, 2),
        "real_tokens": result.real_tokens,
        "steps": result.steps,
        "user_s": round(after.user - before.user, 2),
        "system_s": round(after.system - before.system, 2),
        "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
        "peak_rss_mib": _hwm_mib(),
    }


def main() -> None:
    shared = require_shared("host_memory")
    from dialsum.engine import host_memory

    if not host_memory.supported():
        print("host_memory: skipped, needs Linux with glibc")
        sys.exit(0)
    use_repo_configs()
    if (variant := variant_arg()) is not None:
        cpu_threads()
        print(json.dumps(measure(variant, shared)))
        return
    runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
    started = time.perf_counter()
    for _ in range(ROUNDS):
        for variant in runs:
            runs[variant].append(run_variant(__file__, variant, lambda v: measure(v, shared)))
    best = {k: max(v, key=lambda r: r["tokens_per_second"]) for k, v in runs.items()}
    o, b = best["ours"]["tokens_per_second"], best["baseline"]["tokens_per_second"]
    assert best["ours"]["real_tokens"] == best["baseline"]["real_tokens"], "both variants must train the same rows"
    write_result(
        "host_memory",
        "real tokens/s (CPU training)",
        o,
        b,
        round(o / b, 2),
        "report",
        details={
            "data": f"shared dev.csv, every {EVERY}rd row, qwen3-4b chat prompts, real Qwen3 tokenizer",
            "model": "Qwen3-shaped (hidden 64, 2 layers), real 151,936-row vocabulary, NF4 base + LoRA, fp32 compute",
            "steps": STEPS,
            "batching": "the qwen3-4b config's max_tokens_per_batch",
            "ours": "host_memory.keep_freed_memory(): mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB",
            "baseline": "glibc malloc defaults",
            "best": best,
            "runs": runs,
            "rounds": ROUNDS,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "threads": int(os.environ.get("BENCH_THREADS", 1)),
            "device": device_info(),
        },
    )


if __name__ == "__main__":
    main()
