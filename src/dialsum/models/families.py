"""The families, keyed by the config's `type`: where each is implemented (imported only when a run needs it, so
an API-only run never loads torch), what it can do (`Trainable` or only a `Summarizer`), whether it wants a GPU,
which hub checkpoints a profile needs, and the one line `dialsum models` shows. Nothing else lists families.

Torch-free: the CLI's checks and the orchestration read this table before anything heavy is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from dialsum.errors import ConfigError


def _weights_source(cfg) -> str:
    if cfg.tiny is not None:
        return f"tiny {cfg.tiny.arch} built locally, random weights ({cfg.tiny.hidden_size} wide)"
    return cfg.model + (f"@{cfg.revision}" if cfg.revision else "")


def describe_trained(cfg) -> str:
    """A fine-tuned profile: its checkpoint (or tiny architecture) and how it is fine-tuned."""
    if cfg.lora is None:
        how = "full fine-tuning"
    else:
        adapters = f"LoRA r{cfg.lora.r}/alpha {cfg.lora.alpha} on {len(cfg.lora.target_modules)} modules"
        quant = cfg.quantization
        how = f"QLoRA: {quant.quant_type} 4-bit base, {adapters}" if quant and quant.load_in_4bit else adapters
    return f"{_weights_source(cfg)}; {how}"


def describe_api(cfg) -> str:
    """An API profile: the served model, the endpoint, the price and the prompt's examples."""
    price = cfg.price
    cost = (
        f"${price.input_per_million:g}/${price.output_per_million:g} per M tokens in/out"
        if price.input_per_million or price.output_per_million
        else "no price per token"
    )
    return f"{cfg.model} at {cfg.base_url}; no training, {cfg.few_shot.k}-shot ({cfg.few_shot.method}), {cost}"


def hub_checkpoints(cfg) -> list[tuple[str, str]]:
    """(repo, file that proves it is cached) for each hub checkpoint a trained profile loads."""
    if cfg.tiny is not None:
        return []
    return [
        (repo, probe)
        for repo, probe in ((cfg.model, "config.json"), (cfg.tokenizer, "tokenizer_config.json"))
        if repo is not None
    ]


@dataclass(frozen=True)
class Family:
    type: str
    module: str
    trainable: bool
    needs_gpu: bool
    describe: Callable[[Any], str]
    hub_checkpoints: Callable[[Any], list[tuple[str, str]]]

    def load(self) -> ModuleType:
        """The implementing module (imported now)."""
        return importlib.import_module(self.module)


REGISTRY: dict[str, Family] = {
    f.type: f
    for f in (
        Family("encoder_decoder", "dialsum.models.encoder_decoder", True, True, describe_trained, hub_checkpoints),
        Family("causal_lm", "dialsum.models.causal_lm", True, True, describe_trained, hub_checkpoints),
        Family("chat_api", "dialsum.models.chat_api", False, False, describe_api, lambda cfg: []),
    )
}


def of(cfg_or_type) -> Family:
    """The family of a config (or of a `type` string)."""
    kind = cfg_or_type if isinstance(cfg_or_type, str) else cfg_or_type.type
    try:
        return REGISTRY[kind]
    except KeyError:
        raise ConfigError(f"unknown model type {kind!r}; known: {', '.join(REGISTRY)}") from None


def trainable(cfg) -> bool:
    return of(cfg).trainable
