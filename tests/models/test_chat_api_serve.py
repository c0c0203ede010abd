"""The chat-API family against a real OpenAI-compatible server: `transformers serve` (the transformers[serving]
extra) on a one-layer model built here whose weights always write a fixed Korean summary
(tests/support/fixed_summary_model.py), behind our fault-injecting proxy (tests/support/chat_server.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.chat_server import ChatServer
from support.fixed_summary_model import SUMMARY, build

from dialsum.config import load_model_config
from dialsum.data import load_splits
from dialsum.models import chat_api, checkpoint_source


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`transformers serve` on the fixed-summary model; its base URL."""
    folder = build(tmp_path_factory.mktemp("fixed-summary"), checkpoint_source(load_model_config("tiny-qwen3")))
    port = free_port()
    serve = [
        str(Path(sys.executable).parent / "transformers"),
        "serve",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(
        serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, "transformers serve exited"
        yield f"http://127.0.0.1:{port}/v1", str(folder)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_faults_in_front_of_transformers_serve_all_recover(served, tmp_path: Path) -> None:
    url, model = served
    proxy = ChatServer(
        upstream=url, retry_after="0.2", faults={1: "429", 2: "500", 3: "drop", 4: "malformed", 6: "500"}
    ).start()
    try:
        cfg = load_model_config(
            "openai-compatible",
            [
                f"base_url={proxy.url}",
                f"model={model}",
                "few_shot.method=first",
                "few_shot.k=1",
                "generation.num_candidates=2",
                "generation.max_tokens=32",
                "limits.concurrency=2",
                "limits.backoff_seconds=0.05",
                "limits.timeout_seconds=60",
                "limits.requests_per_minute=null",
            ],
        )
        splits = load_splits(None)
        session = chat_api.open_session(cfg, splits["train"][:10], tmp_path / "responses.jsonl")
        texts, candidates = chat_api.summarize_candidates(cfg, session, splits["dev"][:4])
    finally:
        proxy.stop()
    assert texts == [SUMMARY] * 4
    assert all([c["text"] for c in row] == [SUMMARY, SUMMARY] for row in candidates)
    stats = session.stats.summary()
    assert stats["retries"] == 5 and stats["failures"] == 0 and stats["requests"] == 8 + 5
    assert stats["tokens_out"] > 0 and stats["tokens_in"] > 0
    assert {r["seed"] for r in proxy.requests} == {42, 43}
