"""API throughput (dialogues/s): the chat-API family summarizing the 499 dev dialogues (../shared) through our
fault-injecting proxy (tests/support/chat_server.py, in its own process) that adds 200 ms to every request, in front
of a fast fake OpenAI-compatible upstream (another process: the same server without faults, answering at once;
`transformers serve` on a 2-core box would measure the model, not the calling). Ours: `limits.concurrency` 8;
baseline, in the same run: the same calls one at a time (`limits.concurrency` 1), as the guide's sequential loop
made them. Each variant starts with an empty response cache, so every dialogue is a request; the prompts (2
examples each from the bundled sample's train.csv, method `first`: ../shared has no train split) and the answers
are the same for both.

Usage: .venv/bin/python bench/api_throughput.py            # writes bench/results/api_throughput.json (needs ../shared)
       .venv/bin/python bench/api_throughput.py --smoke    # tiny sizes in seconds; JSON to a temporary folder
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import dev_examples, require_shared, sized, use_repo_configs, write_result  # noqa: E402

SERVER = Path(__file__).resolve().parents[1] / "tests" / "support" / "chat_server.py"

DIALOGUES = sized(499, 16)
LATENCY = sized(0.2, 0.05)
CONCURRENCY = 8


def summarize(url: str, examples, train, concurrency: int) -> tuple[float, dict]:
    from dialsum.config import load_model_config
    from dialsum.models import chat_api

    cfg = load_model_config(
        "openai-compatible",
        [
            f"base_url={url}",
            "few_shot.method=first",
            "few_shot.k=2",
            f"limits.concurrency={concurrency}",
            "limits.requests_per_minute=null",
        ],
    )
    with tempfile.TemporaryDirectory() as folder:
        session = chat_api.open_session(cfg, train, Path(folder) / "responses.jsonl")
        started = time.perf_counter()
        texts = chat_api.summarize(cfg, session, examples)
        seconds = time.perf_counter() - started
    if any(not t for t in texts):
        raise SystemExit("a dialogue came back without a summary")
    return seconds, session.stats.summary()


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """A chat server in its own process (so its threads do not share this process's interpreter lock), and its URL."""
    proc = subprocess.Popen([sys.executable, str(SERVER), *args], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def main() -> None:
    shared = require_shared("api_throughput")
    use_repo_configs()
    from dialsum.data import load_splits

    examples = dev_examples(shared, DIALOGUES)
    train = load_splits(None)["train"][:50]  # ../shared has no train.csv: the examples come from the bundled sample
    upstream, upstream_url = start_server()
    proxy, proxy_url = start_server("--latency", str(LATENCY), "--upstream", upstream_url)
    try:
        sequential, seq_stats = summarize(proxy_url, examples, train, 1)
        concurrent, stats = summarize(proxy_url, examples, train, CONCURRENCY)
    finally:
        for server in (proxy, upstream):
            server.terminate()
            server.wait()
    ours, baseline = len(examples) / concurrent, len(examples) / sequential
    write_result(
        "api_throughput",
        "dialogues/s",
        round(ours, 2),
        round(baseline, 2),
        round(ours / baseline, 2),
        f">= 6x: concurrency {CONCURRENCY} against sequential calls, {int(LATENCY * 1000)} ms added a request",
        {
            "dialogues": len(examples),
            "added_latency_s": LATENCY,
            "concurrency": CONCURRENCY,
            "seconds": {"concurrent": round(concurrent, 2), "sequential": round(sequential, 2)},
            "requests": {"concurrent": stats["requests"], "sequential": seq_stats["requests"]},
            "latency_p50_s": stats["latency_p50_s"],
            "latency_p95_s": stats["latency_p95_s"],
            "upstream": "fake OpenAI-compatible server (tests/support/chat_server.py), answering at once",
        },
    )


if __name__ == "__main__":
    main()
