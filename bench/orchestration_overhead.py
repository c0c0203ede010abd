"""Orchestration overhead: the embedded `train-all` flow vs calling `pipeline.run_model` directly.

Trains tiny-bart, tiny-llama and tiny-qwen3 with debug=True (a few steps on a slice, so the run is
short and the overhead stands out) both ways in one process, publishing to a local folder in a temp
dir: directly, one after another, and through `orchestration.train_all.run_embedded` (temporary local Prefect
API started and stopped per run, one child subflow per model, read-back from storage, ensemble,
artifacts), alternating, REPEATS times. A warm-up run of each model first keeps one-off imports and
model loading out of both timings. Torch runs one thread (BENCH_THREADS) both ways: with two, a loaded machine
stalls the main thread's kernels far more than a worker thread's. The Prefect home is a fresh temp folder. The
embedded runs pass `force`, so they train although the direct runs already published the same models (else they
would be reused, unchanged).

`ours` is the best embedded wall time minus the best direct wall time (seconds), `baseline` the best
direct wall time. Writes bench/results/orchestration_overhead.json.

Usage: .venv/bin/python bench/orchestration_overhead.py [--smoke]   (--smoke: one small model, once)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SMOKE, cpu_threads, sized, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["tiny-bart", "tiny-llama", "tiny-qwen3"]
REPEATS = sized(3, 1)
SMOKE_PROFILE = (
    "type: encoder_decoder\nmodel: tiny-bart\ntiny: {arch: bart, hidden_size: 16, num_layers: 1, "
    "num_heads: 2, intermediate_size: 16, vocab_size: 300}\nmax_source_length: 64\nmax_target_length: 16\n"
    "training: {epochs: 1, batch_size: 4, debug_rows: 4, debug_steps: 1, eval_score_rows: 2}\n"
    "generation: {batch_size: 4, max_new_tokens: 128, num_beams: 1, no_repeat_ngram_size: 0}\n"
)


def configure(tmp: Path) -> None:
    """Offline, untracked runs with outputs and the Prefect home in `tmp`; must run before Prefect is imported."""
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.update(
        PREFECT_HOME=str(tmp / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        WANDB_MODE="disabled",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DIALSUM_OUTPUT_DIR=str(tmp / "outputs"),
        DIALSUM_CONFIG_DIR=str(ROOT / "configs"),
        # a loaded machine can take longer than Prefect's default 20 s to start the temporary server
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )


def time_direct(store: str, run_id: str) -> float:
    from dialsum.pipeline import run_model

    started = time.perf_counter()
    for model in MODELS:
        run_model(model, run_id=run_id, debug=True, storage_url=store, group=run_id)
    return time.perf_counter() - started


def time_embedded(store: str, run_id: str) -> float:
    """One embedded train-all run, including the start and stop of its temporary Prefect API."""
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    from dialsum.orchestration.train_all import run_embedded

    started = time.perf_counter()
    summary = run_embedded(MODELS, run_id=run_id, debug=True, storage_url=store, force=True)
    APILogWorker.drain_all(timeout=5)
    SubprocessASGIServer().stop()
    seconds = time.perf_counter() - started
    failed = [row["model"] for row in summary["rows"] if row["status"] != "completed"]
    if failed or not summary["ensemble"]:
        sys.exit(f"embedded run failed for {failed}: {summary}")
    return seconds


def measure(tmp: Path) -> dict[str, list[float]]:
    """Warm up each model, then time direct and embedded runs alternately, REPEATS times."""
    from dialsum.pipeline import run_model

    for model in MODELS if not SMOKE else ():
        run_model(model, run_id="bench-warmup", debug=True, publish=False)
    store = str(tmp / "store")
    times: dict[str, list[float]] = {"direct": [], "embedded": []}
    for rep in range(REPEATS):
        times["direct"].append(time_direct(store, f"bench-direct-{rep}"))
        times["embedded"].append(time_embedded(store, f"bench-embedded-{rep}"))
    return times


def main() -> None:
    threads = cpu_threads()  # both ways alike: torch's thread count set here holds in Prefect's task threads too
    with tempfile.TemporaryDirectory(prefix="dialsum-bench-") as tmp:
        configure(Path(tmp))
        if SMOKE:
            (Path(tmp) / "smoke-bart.yaml").write_text(SMOKE_PROFILE, encoding="utf-8")
            MODELS[:] = [str(Path(tmp) / "smoke-bart.yaml")]
        times = measure(Path(tmp))
    direct, embedded = min(times["direct"]), min(times["embedded"])
    result = {
        "name": "orchestration_overhead",
        "unit": "s",
        "ours": round(embedded - direct, 2),
        "baseline": round(direct, 2),
        "ratio": round(embedded / direct, 3),
        "goal": "ours <= 20",
        "details": {
            "models": MODELS,
            "debug": True,
            "repeats": REPEATS,
            "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "statistic": "best of the repeats for each way; the first embedded run also creates the Prefect database",
            "overhead_per_repeat": [round(e - d, 2) for d, e in zip(times["direct"], times["embedded"])],
            "storage": "local folder in a temp dir",
            "prefect": "temporary local Prefect API (no server) started and stopped by each embedded run; "
            "fresh PREFECT_HOME",
            "ours_does": "train-all flow: temporary Prefect API start, one launch task and train-model subflow per "
            "model (in-process, one at a time), verified read-back of metrics and predictions from storage, "
            "ensemble (both strategies scored on dev) published to storage, table and markdown artifacts",
            "baseline_does": "pipeline.run_model for each model in turn, same process, same storage",
            "cpus": os.cpu_count(),
            "threads": threads,
        },
    }
    write_result(**result)


if __name__ == "__main__":
    main()
