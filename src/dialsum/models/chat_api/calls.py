"""Calling an OpenAI-compatible chat API so that a real one is survived: at most `concurrency` requests in flight,
requests and tokens per minute kept under their limits, retries with exponential backoff (and jitter) after a
429, a 5xx, a timeout, a dropped connection or a malformed answer, honouring `Retry-After` (every request waits it
out, not only the one that was told), and a timeout per request. A budget stops new requests before the cost
could pass it. Accounting (`Stats`) counts requests, cache hits, retries, failures, tokens, cost and latency.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field

from dialsum.errors import DialsumError


class CallFailed(Exception):
    """A request that failed for good (after its retries, or at once for a refused request)."""


class BudgetReached(Exception):
    """Starting this request could pass the run's cost budget."""


def estimate_tokens(text: str) -> int:
    """Tokens of a text without the API's tokenizer: one per character (Korean tokenizers use 1-2 characters a
    token, so this errs on the high side), plus a few per message for the chat format."""
    return len(text) + 4


@dataclass
class Stats:
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "failures": self.failures,
            "tokens_in": self.prompt_tokens,
            "tokens_out": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "latency_p50_s": pct(0.5),
            "latency_p95_s": pct(0.95),
            "errors": dict(self.errors),
        }


class Limiter:
    """Concurrency, requests-per-minute and tokens-per-minute limits, and a shared pause after a Retry-After."""

    def __init__(self, limits) -> None:
        self.slots = asyncio.Semaphore(limits.concurrency)
        self.rpm, self.tpm = limits.requests_per_minute, limits.tokens_per_minute
        self.started: deque[tuple[float, int]] = deque()
        self.resume_at = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self.resume_at = max(self.resume_at, time.monotonic() + seconds)

    async def admit(self, tokens: int) -> None:
        """Wait until a request of `tokens` may start under the per-minute limits and any pause."""
        async with self._lock:
            while True:
                now = time.monotonic()
                while self.started and now - self.started[0][0] >= 60:
                    self.started.popleft()
                waits = [self.resume_at - now]
                if self.rpm and len(self.started) >= self.rpm:
                    waits.append(self.started[0][0] + 60 - now)
                used = sum(t for _, t in self.started)
                if self.tpm and self.started and used + tokens > self.tpm:
                    waits.append(self.started[0][0] + 60 - now)
                wait = max(waits)
                if wait <= 0:
                    self.started.append((now, tokens))
                    return
                await asyncio.sleep(wait)


def retry_after(exc: BaseException) -> float | None:
    """Seconds from a `Retry-After` (or `retry-after-ms`) header of the error's response, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after") is not None:
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        return None
    return None


def classify(exc: BaseException) -> tuple[bool, str]:
    """(retryable, a short error label) for an exception raised by a request."""
    import openai

    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.APITimeoutError):
        return True, "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return True, "connection"
    if isinstance(exc, openai.APIStatusError):
        return status == 429 or status in (408, 409) or status >= 500, f"http {status}"
    if isinstance(exc, (openai.APIResponseValidationError, ValueError, Malformed)):
        return True, "malformed response"
    return False, type(exc).__name__


class Malformed(Exception):
    """A 200 answer without a usable message."""


def parse(response) -> tuple[str, int, int]:
    """(text, prompt tokens, completion tokens) of a chat completion; Malformed when it has no text."""
    try:
        text = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        raise Malformed("no choices[0].message.content") from None
    if not isinstance(text, str) or not text.strip():
        raise Malformed("an empty message")
    usage = getattr(response, "usage", None)
    return text, int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)


@dataclass
class Caller:
    """Sends one request with the limits, retries, budget and accounting of a run."""

    client: object
    limits: object
    price: object
    stats: Stats
    max_cost_usd: float | None = None
    redact: object = staticmethod(lambda text: text)
    limiter: Limiter | None = None
    reserved: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price.input_per_million + completion_tokens * self.price.output_per_million) / 1e6

    def _reserve(self, estimate: float) -> None:
        if self.max_cost_usd is not None and self.stats.cost_usd + self.reserved + estimate > self.max_cost_usd:
            raise BudgetReached()
        self.reserved += estimate

    async def call(self, request: dict, est_in: int) -> tuple[str, int, int, float]:
        """(text, prompt tokens, completion tokens, latency) of a request, after retries; CallFailed else."""
        self.limiter = self.limiter or Limiter(self.limits)
        est_out = request.get("max_tokens", 0)
        estimate = self.cost(est_in, est_out)
        self._reserve(estimate)
        try:
            return await self._attempts(request, est_in + est_out)
        finally:
            self.reserved -= estimate

    async def _attempts(self, request: dict, tokens: int) -> tuple[str, int, int, float]:
        lim, last = self.limits, "no attempt"
        for attempt in range(lim.max_retries + 1):
            await self.limiter.admit(tokens)
            async with self.limiter.slots:
                started = time.monotonic()
                self.stats.requests += 1
                try:
                    response = await self.client.chat.completions.create(**request, timeout=lim.timeout_seconds)
                    text, tin, tout = parse(response)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001  (classified: retried, or the row fails with its error)
                    retryable, label = classify(exc)
                    self.stats.errors[label] = self.stats.errors.get(label, 0) + 1
                    last = self.redact(f"{label}: {str(exc)[:300]}")
                    if not retryable:
                        raise CallFailed(last) from None
                    told = retry_after(exc)
                    delay = told if told is not None else min(lim.max_backoff_seconds, lim.backoff_seconds * 2**attempt)
                    delay = min(delay, lim.max_backoff_seconds) * (1 if told is not None else random.uniform(0.5, 1))
                    if told is not None:
                        self.limiter.pause(delay)
                else:
                    latency = time.monotonic() - started
                    self.stats.latencies.append(latency)
                    self.stats.prompt_tokens += tin
                    self.stats.completion_tokens += tout
                    self.stats.cost_usd += self.cost(tin, tout)
                    return text, tin, tout, latency
            if attempt < lim.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(delay)
        raise CallFailed(f"{last} (after {lim.max_retries} retries)")


class RowsFailed(DialsumError):
    """More rows failed after their retries than the profile allows."""
