"""The profile of a generate-only family: a chat model behind an OpenAI-compatible API (Upstage Solar, vLLM, TGI,
`transformers serve`). It has no weights to load, so no `lora`, `quantization`, `training` or `tiny` section:
its keys are the endpoint, the price, the prompt, the calling limits and the decoding settings.

The API key is never part of a profile: the profile names the environment variable (or Prefect Secret block)
that holds it.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from dialsum.config.schema import NAME_PATTERN, Strict

# Keys that say how to call, not what to ask: a resume may change them (a larger budget, more failures allowed), and
# they stay out of a run's fingerprint.
RUN_CONTROL = frozenset({"max_cost_usd", "max_failed_rows", "limits"})


class PriceConfig(Strict):
    input_per_million: float = Field(0.0, ge=0, description="USD per million input (prompt) tokens.")
    output_per_million: float = Field(0.0, ge=0, description="USD per million output (completion) tokens.")


class FewShotConfig(Strict):
    k: int = Field(3, ge=0, le=16, description="Example (dialogue, summary) pairs from train.csv before each dialogue.")
    method: Literal["similar", "first"] = Field(
        "similar",
        description="similar: the k train dialogues closest to this one (cosine over Kiwi morpheme counts); "
        "first: the first k train rows, the same for every dialogue.",
    )
    max_dialogue_chars: int = Field(1500, ge=100, description="Example dialogues longer than this are not chosen.")


class LimitsConfig(Strict):
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    requests_per_minute: int | None = Field(100, ge=1, description="Requests started per minute; null: no limit.")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Estimated tokens (in + max out) a minute; null: none."
    )
    timeout_seconds: float = Field(60.0, gt=0, description="Longest wait for one response.")
    max_retries: int = Field(6, ge=0, description="Retries after a 429, a 5xx, a timeout or a dropped connection.")
    backoff_seconds: float = Field(
        1.0,
        ge=0,
        description="First retry delay; doubled each retry (with jitter), "
        "unless the server's Retry-After says otherwise.",
    )
    max_backoff_seconds: float = Field(60.0, ge=0, description="Longest delay between retries.")


class ChatGenerationConfig(Strict):
    max_tokens: int = Field(150, ge=1, description="Longest summary, in the API's tokens.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the prediction (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(42, description="Seed sent with the prediction; candidate i is sent seed + i.")
    num_candidates: int = Field(
        1,
        ge=1,
        le=64,
        description="Summaries kept per dialogue for MBR: one request each, with distinct seeds "
        "(candidate 0 is the prediction).",
    )
    candidate_temperature: float = Field(0.7, ge=0, le=2, description="Temperature of candidates 1..N-1.")
    batch_size: int = Field(64, ge=1, description="Dialogues handed to the caller at a time (progress granularity).")


class ChatAPIConfig(Strict):
    type: Literal["chat_api"] = Field(description="Model family: a chat model behind an OpenAI-compatible API.")
    name: str = Field(pattern=NAME_PATTERN, description="Short model name; defaults to the YAML file stem.")
    model: str = Field(description="The model name the API serves, e.g. solar-pro2.")
    base_url: str = Field(description="The API's base URL, e.g. https://api.upstage.ai/v1.")
    api_key_env: str | None = Field(
        "UPSTAGE_API_KEY",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the API key; null: the endpoint needs none.",
    )
    api_key_block: str | None = Field(
        None, description="Prefect Secret block holding the key if the variable is unset."
    )
    price: PriceConfig = Field(default_factory=PriceConfig, description="Price per million tokens.")
    max_cost_usd: float | None = Field(None, gt=0, description="Stop before the run's cost would pass this (USD).")
    max_failed_rows: int = Field(0, ge=0, description="Rows allowed to fail after retries; more fails the run.")
    system_prompt: str = Field(description="System message.")
    instruction: str = Field(description="User instruction placed before each dialogue.")
    prompt_version: str = Field("1", description="Bump when the prompt changes meaning (part of the cache key).")
    few_shot: FewShotConfig = Field(default_factory=FewShotConfig, description="Example pairs from train.csv.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Concurrency, rate limits, retries.")
    generation: ChatGenerationConfig = Field(default_factory=ChatGenerationConfig, description="Decoding settings.")
    debug_rows: int = Field(32, ge=1, description="Rows per split kept by --debug.")
    CANDIDATE_METHODS: ClassVar[tuple[str, ...]] = ("seeds",)

    # What code written for every family reads: an API model has no tiny build, no revision and no training seed.
    tiny: ClassVar[None] = None
    revision: ClassVar[None] = None
    tokenizer: ClassVar[None] = None
    candidate_method: ClassVar[str] = "seeds"

    @field_validator("prompt_version", mode="before")
    @classmethod
    def _version_as_text(cls, value):
        return str(value) if isinstance(value, (int, float)) else value

    @model_validator(mode="after")
    def _base_url_is_http(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        return self

    def prompt_fingerprint(self) -> str:
        """The prompt's identity: its text, version and few-shot choice; part of every cache key."""
        text = "\0".join([self.prompt_version, self.system_prompt, self.instruction, self.few_shot.model_dump_json()])
        return hashlib.sha256(text.encode()).hexdigest()[:16]
