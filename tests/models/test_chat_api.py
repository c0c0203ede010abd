"""The chat-API family against a real HTTP server on loopback (tests/support/chat_server.py): retries after every kind
of injected fault, failed rows counted and never empty, the response cache, the budget, few-shot choice and the
families' registry and protocols."""

from __future__ import annotations

import json

import pytest
from support.chat_server import ChatServer

from dialsum.config import load_model_config
from dialsum.data import Example, load_splits
from dialsum.models import chat_api, families
from dialsum.models.chat_api.prompt import ShotSelector, clean
from dialsum.models.protocols import Summarizer, Trainable

FAST = [
    "few_shot.method=first",
    "few_shot.k=1",
    "limits.backoff_seconds=0.01",
    "limits.max_backoff_seconds=0.5",
    "limits.timeout_seconds=1",
    "limits.max_retries=3",
    "limits.requests_per_minute=null",
]


@pytest.fixture
def server():
    srv = ChatServer(retry_after="0.2", delay_seconds=2.0).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def dev() -> list[Example]:
    return load_splits(None)["dev"][:8]


@pytest.fixture(scope="module")
def train() -> list[Example]:
    return load_splits(None)["train"][:20]


def profile(server: ChatServer, *extra: str):
    return load_model_config("openai-compatible", [f"base_url={server.url}", *FAST, *extra])


def test_registry_says_what_each_family_can_do():
    from dialsum.models import causal_lm, encoder_decoder

    assert isinstance(encoder_decoder, Trainable) and isinstance(causal_lm, Trainable)
    assert isinstance(chat_api, Summarizer) and not isinstance(chat_api, Trainable)
    assert [t for t, f in families.REGISTRY.items() if not f.trainable] == ["chat_api"]
    cfg = load_model_config("solar-pro2")
    assert families.of(cfg).hub_checkpoints(cfg) == []
    assert "solar-pro2 at https://api.upstage.ai/v1" in families.of(cfg).describe(cfg)
    assert families.of(load_model_config("tiny-bart")).load() is encoder_decoder


def test_api_profile_refuses_training_sections(tmp_path):
    from dialsum.errors import ConfigError

    path = tmp_path / "api.yaml"
    path.write_text("type: chat_api\nmodel: m\nbase_url: http://127.0.0.1:1/v1\nlora: {r: 8}\n")
    with pytest.raises(ConfigError, match="lora"):
        load_model_config(str(path))


def test_every_injected_fault_recovers(server, dev, train, tmp_path):
    server.faults = {1: "429", 2: "500", 3: "drop", 4: "malformed", 5: "empty", 6: "delay"}
    cfg = profile(server, "limits.concurrency=1")
    session = chat_api.open_session(cfg, train, tmp_path / "cache.jsonl")
    texts = chat_api.summarize(cfg, session, dev)
    assert all(t and "#Person" in t for t in texts)
    stats = session.stats.summary()
    assert stats["retries"] == 6 and stats["failures"] == 0
    assert stats["errors"] == {"http 429": 1, "http 500": 1, "connection": 1, "malformed response": 2, "timeout": 1}
    assert stats["requests"] == len(dev) + 6 and stats["tokens_out"] > 0
    assert all(r["error"] is None and len(r["shots"]) == 1 for r in session.rows.values())


def test_a_row_that_keeps_failing_is_counted_never_empty(server, dev, train, tmp_path):
    server.fail_matching = json.dumps(dev[2].dialogue, ensure_ascii=False)[1:-1]  # as the request body holds it
    cfg = profile(server)
    session = chat_api.open_session(cfg, train, tmp_path / "cache.jsonl")
    texts = chat_api.summarize(cfg, session, dev)
    assert texts[2] is None and all(t for i, t in enumerate(texts) if i != 2)
    assert session.stats.failures == 1
    error = session.rows[dev[2].fname]["error"]
    assert "http 500" in error and "after 3 retries" in error


def test_cache_answers_a_rerun_and_the_prompt_version_is_part_of_the_key(server, dev, train, tmp_path):
    cfg = profile(server, "generation.num_candidates=3")
    first = chat_api.summarize_candidates(cfg, chat_api.open_session(cfg, train, tmp_path / "c.jsonl"), dev)
    seen = len(server.requests)
    assert seen == 3 * len(dev) and len({r["seed"] for r in server.requests}) == 3
    again = chat_api.open_session(cfg, train, tmp_path / "c.jsonl")
    assert chat_api.summarize_candidates(cfg, again, dev) == first
    assert len(server.requests) == seen and again.stats.cache_hits == 3 * len(dev) and again.stats.requests == 0
    bumped = profile(server, "generation.num_candidates=3", "prompt_version=2")
    chat_api.summarize(bumped, chat_api.open_session(bumped, train, tmp_path / "c.jsonl"), dev[:1])
    assert len(server.requests) == seen + 1


def test_budget_stops_before_it_is_passed(server, dev, train, tmp_path):
    cfg = profile(
        server,
        "price.input_per_million=1000",
        "price.output_per_million=1000",
        "max_cost_usd=2",
        "limits.concurrency=1",
    )
    session = chat_api.open_session(cfg, train, tmp_path / "c.jsonl")
    texts = chat_api.summarize(cfg, session, dev)
    assert session.budget_reached and session.stats.cost_usd <= 2
    paid = [t for t in texts if t is not None]
    assert 0 < len(paid) < len(dev) and len(session.cache) == len(paid) == session.stats.requests


def test_similar_examples_are_chosen_on_morphemes():
    train = [
        Example("t0", "#Person1#: 비행기 표를 예약하고 싶어요.\n#Person2#: 어느 공항에서 출발하시나요?", "예약"),
        Example("t1", "#Person1#: 감기에 걸려서 병원에 왔어요.\n#Person2#: 열이 있나요?", "병원"),
        Example("t2", "#Person1#: 이 셔츠 얼마예요?\n#Person2#: 만 원입니다.", "쇼핑"),
    ]
    query = Example("d0", "#Person1#: 병원 예약을 하려고요. 감기 증상이 있어요.\n#Person2#: 열은 없나요?")
    chosen = ShotSelector(train, 2, "similar", 1500).choose([query])[0]
    assert [ex.fname for ex in chosen] == ["t1", "t0"]


def test_post_processing_keeps_the_tags():
    assert clean('요약: "#Person1#은 #Person2#에게\n길을 묻습니다."  ') == "#Person1#은 #Person2#에게 길을 묻습니다."


def test_preflight_estimate_counts_every_candidate(dev, train):
    cfg = load_model_config("solar-pro2", ["few_shot.method=first", "generation.num_candidates=2"])
    est = chat_api.estimate(cfg, {"dev": dev}, train)
    assert est["dev"]["requests"] == 2 * len(dev) and est["dev"]["tokens_in"] > 0
    assert 0 < est["cost_usd"] <= est["cost_usd_max"]
