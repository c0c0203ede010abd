"""The chat-API family: summaries from a chat model behind an OpenAI-compatible API (Upstage Solar, vLLM, TGI,
`transformers serve`), on the `openai` client (async). A `Summarizer` only (models.protocols): nothing to load,
train or save. Torch-free.

`open_session` resolves the API key (the environment variable the profile names, else its Prefect Secret block;
held as a SecretStr and scrubbed from every error text) and opens the run's response cache; `summarize` and
`summarize_candidates` send one request per summary (candidate i with seed + i) through `calls.Caller`, answering
from the cache where they can. A row whose request still fails is returned as None and recorded with its error in
`session.rows`; the pipeline counts it, never writes it as an empty summary unless the profile allows failures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from dialsum.errors import ConfigError
from dialsum.models.chat_api.cache import ResponseCache, cache_key
from dialsum.models.chat_api.calls import BudgetReached, Caller, CallFailed, Stats, estimate_tokens
from dialsum.models.chat_api.prompt import ShotSelector, clean, messages
from dialsum.settings import get_settings

TRAINABLE = False
PROGRESS_EVERY = 50
log = logging.getLogger(__name__)


def api_key(cfg) -> SecretStr | None:
    """The profile's API key: its environment variable, else its Prefect Secret block; None when it needs none."""
    if cfg.api_key_env is None and cfg.api_key_block is None:
        return None
    if cfg.api_key_env and (key := get_settings().env_secret(cfg.api_key_env)) is not None:
        return key
    if cfg.api_key_block:
        from prefect.blocks.system import Secret

        try:
            return SecretStr(str(Secret.load(cfg.api_key_block).get()))
        except ValueError as exc:
            raise ConfigError(
                f"{cfg.name}: cannot read the Prefect Secret block {cfg.api_key_block!r}: {exc}"
            ) from None
    raise ConfigError(
        f"{cfg.name}: no API key: set the environment variable {cfg.api_key_env}"
        + (f" or the Prefect Secret block {cfg.api_key_block}" if cfg.api_key_block else "")
    )


@dataclass
class Session:
    """What an API run generates with: examples to choose shots from, the key, the cache and the accounting."""

    cfg: object
    selector: ShotSelector
    cache: ResponseCache
    key: SecretStr | None = None
    stats: Stats = field(default_factory=Stats)
    rows: dict[str, dict] = field(default_factory=dict)
    budget_reached: bool = False
    done: int = 0
    total: int = 0

    def redact(self, text: str) -> str:
        secret = self.key.get_secret_value() if self.key else ""
        return text.replace(secret, "***") if secret else text


def open_session(cfg, train: Sequence, cache_path: Path) -> Session:
    """A session over the run's response cache (`cache_path`, created on the first response)."""
    selector = ShotSelector(train, cfg.few_shot.k, cfg.few_shot.method, cfg.few_shot.max_dialogue_chars)
    return Session(cfg, selector, ResponseCache(cache_path), api_key(cfg))


def decoding(cfg, candidate: int) -> dict:
    """The decoding settings of candidate `candidate` (0 is the prediction): distinct seeds, so a server that ignores
    `n` still draws distinct candidates."""
    g = cfg.generation
    return {
        "max_tokens": g.max_tokens,
        "temperature": g.temperature if candidate == 0 else g.candidate_temperature,
        "top_p": g.top_p,
        "seed": g.seed + candidate,
    }


def generation_settings(cfg, session=None) -> dict:
    g = cfg.generation
    record = {
        "api": {"base_url": cfg.base_url, "model": cfg.model},
        "generate": decoding(cfg, 0),
        "prompt": {
            "version": cfg.prompt_version,
            "fingerprint": cfg.prompt_fingerprint(),
            "few_shot": cfg.few_shot.model_dump(),
        },
        "limits": cfg.limits.model_dump(),
    }
    if g.num_candidates > 1:
        record["candidates"] = {
            "method": "seeds",
            "num_candidates": g.num_candidates,
            "generate": {k: v for k, v in decoding(cfg, 1).items() if k != "seed"},
            "seeds": [g.seed + i for i in range(g.num_candidates)],
        }
    return record


def summarize(cfg, session: Session, examples: Sequence, progress=None) -> list[str | None]:
    """One summary per dialogue (None where the row failed; see `session.rows`)."""
    return _in_thread(_summarize(cfg, session, list(examples), 1, progress))[0]


def summarize_candidates(
    cfg, session: Session, examples: Sequence, progress=None
) -> tuple[list[str | None], list[list[dict]]]:
    """The prediction and `num_candidates` candidates per dialogue (candidate 0 is the prediction)."""
    return _in_thread(_summarize(cfg, session, list(examples), cfg.generation.num_candidates, progress))


def _in_thread(coro):
    """Run the coroutine on its own event loop in a worker thread (the caller may already run a loop). Ctrl-C
    cancels it at once: requests in flight are dropped (the cache holds every answer that arrived), none starts."""
    running: dict = {}

    async def main():
        running["loop"], running["task"] = asyncio.get_running_loop(), asyncio.current_task()
        return await coro

    with ThreadPoolExecutor(1, thread_name_prefix="chat-api") as pool:
        future = pool.submit(asyncio.run, main())
        try:
            return future.result()
        except KeyboardInterrupt:
            if "loop" in running:
                running["loop"].call_soon_threadsafe(running["task"].cancel)
            raise


async def _summarize(cfg, session: Session, examples: list, n: int, progress) -> tuple[list, list[list[dict]]]:
    from openai import AsyncOpenAI

    key = session.key.get_secret_value() if session.key else "no-key"
    client = AsyncOpenAI(api_key=key, base_url=cfg.base_url, max_retries=0, timeout=cfg.limits.timeout_seconds)
    caller = Caller(client, cfg.limits, cfg.price, session.stats, cfg.max_cost_usd, redact=session.redact)
    shots = session.selector.choose(examples)
    session.done, session.total = 0, len(examples)
    try:
        rows = await asyncio.gather(*(_row(cfg, session, caller, ex, s, n, progress) for ex, s in zip(examples, shots)))
    finally:
        session.cache.close()
        await client.close()
    texts = [r[0]["text"] if r else None for r in rows]
    return texts, [[{"text": c["text"], "logprob": None, "tokens": c["tokens"]} for c in r] if r else [] for r in rows]


async def _row(cfg, session: Session, caller: Caller, ex, shots: list, n: int, progress) -> list[dict] | None:
    msgs = messages(cfg, ex, shots)
    est_in = sum(estimate_tokens(m["content"]) for m in msgs)
    results = await asyncio.gather(
        *(_request(cfg, session, caller, msgs, est_in, i) for i in range(n)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    for r in errors:
        if not isinstance(r, (CallFailed, BudgetReached)):
            raise r
    record = {"fname": ex.fname, "shots": [s.fname for s in shots], "error": None}
    if errors:
        budget = any(isinstance(r, BudgetReached) for r in errors)
        record["error"] = (
            "not sent: the cost budget (max_cost_usd) would be passed"
            if budget
            else str(next(r for r in errors if isinstance(r, CallFailed)))
        )
        session.stats.failures += 0 if budget else 1
    session.rows[ex.fname] = record
    session.done += 1
    if session.done % PROGRESS_EVERY == 0 or session.done == session.total:
        s = session.stats
        log.info(
            "%s: %d/%d rows, %d requests, %d cache hits, %d retries, %d failed, $%.4f so far",
            cfg.name,
            session.done,
            session.total,
            s.requests,
            s.cache_hits,
            s.retries,
            s.failures,
            s.cost_usd,
        )
    if progress is not None:
        progress.update(1)
    if errors:
        return None
    return [{"text": clean(r["text"]), "tokens": r.get("completion_tokens")} for r in results]


async def _request(cfg, session: Session, caller: Caller, msgs: list, est_in: int, candidate: int) -> dict:
    settings = decoding(cfg, candidate)
    key = cache_key(cfg.base_url, cfg.model, cfg.prompt_fingerprint(), msgs, settings, candidate)
    if (hit := session.cache.get(key)) is not None:
        session.stats.cache_hits += 1
        return hit
    if session.budget_reached:
        raise BudgetReached()
    try:
        text, tin, tout, latency = await caller.call({"model": cfg.model, "messages": msgs, **settings}, est_in)
    except BudgetReached:
        session.budget_reached = True
        raise
    record = {"text": text, "prompt_tokens": tin, "completion_tokens": tout, "latency": round(latency, 3)}
    session.cache.put(key, record)
    return record


def estimate(cfg, splits: dict[str, list], train: Sequence) -> dict:
    """Before any request: the estimated input and output tokens and cost of predicting dev and test (every
    candidate), from the prompts as they will be sent (shots chosen) and the train summaries' lengths."""
    selector = ShotSelector(train, cfg.few_shot.k, cfg.few_shot.method, cfg.few_shot.max_dialogue_chars)
    summaries = [estimate_tokens(ex.summary) for ex in train if ex.summary] or [cfg.generation.max_tokens]
    per_answer = min(cfg.generation.max_tokens, round(sum(summaries) / len(summaries)))
    n, out = cfg.generation.num_candidates, {}
    for split in ("dev", "test"):
        examples = splits.get(split) or []
        prompts = [messages(cfg, ex, s) for ex, s in zip(examples, selector.choose(examples))]
        tokens_in = n * sum(estimate_tokens(m["content"]) for msgs in prompts for m in msgs)
        tokens_out = n * per_answer * len(examples)
        out[split] = {
            "rows": len(examples),
            "requests": n * len(examples),
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "tokens_out_max": n * cfg.generation.max_tokens * len(examples),
        }
    total_in = sum(v["tokens_in"] for v in out.values())
    total_out = sum(v["tokens_out"] for v in out.values())
    worst_out = sum(v["tokens_out_max"] for v in out.values())
    p = cfg.price
    out["cost_usd"] = round((total_in * p.input_per_million + total_out * p.output_per_million) / 1e6, 4)
    out["cost_usd_max"] = round((total_in * p.input_per_million + worst_out * p.output_per_million) / 1e6, 4)
    return out


def format_estimate(cfg, est: dict) -> str:
    """The preflight lines of an API profile: requests, tokens and cost per split, and the total."""
    lines = [f"{cfg.name} ({cfg.model} at {cfg.base_url}): no request sent; tokens estimated at 1 per character"]
    for split in ("dev", "test"):
        if est[split]["rows"]:
            s = est[split]
            lines.append(
                f"  {split}: {s['rows']} rows, {s['requests']} requests, ~{s['tokens_in']:,} tokens in, "
                f"~{s['tokens_out']:,} out (at most {s['tokens_out_max']:,})"
            )
    budget = f"; budget ${cfg.max_cost_usd:g}" if cfg.max_cost_usd else ""
    lines.append(
        f"  cost: ~${est['cost_usd']:.4f} (at most ${est['cost_usd_max']:.4f} if every answer runs to "
        f"max_tokens){budget}"
    )
    return "\n".join(lines)
