"""The model families and what they share. Which families exist, and what each can do, is `families.REGISTRY`
(keyed by the config's `type`); a family is a module satisfying the Protocols of `protocols`: every one is a
`Summarizer`, the fine-tuned ones (`encoder_decoder`, `causal_lm`) are also `Trainable`, and `chat_api` (a chat
model behind an OpenAI-compatible API) only generates. Families are imported when a run needs them, so an API-only
run never loads torch, peft or bitsandbytes.

Shared pieces: the trainable families' common surface and generation configs (`trained`), decoding rules, new-token
rows, merging, memory estimates, tiny models, stand-ins of the real profiles, pinned hub bases, and `preflight`,
which drives a family's tokenizer surface. May import data and the foundations; never storage or any layer above.

Adding a model of a known family is one YAML file in configs/models/.
"""

from __future__ import annotations

from types import ModuleType

from dialsum.models import families


def family(cfg) -> ModuleType:
    """The module implementing `cfg`'s family (imported now)."""
    return families.of(cfg).load()


def checkpoint_source(cfg) -> str:
    """Where base weights come from: a locally built tiny model, or the configured hub id / path."""
    if cfg.tiny is not None:
        from dialsum.models.tiny import build_tiny

        return str(build_tiny(cfg.name, cfg.tiny, seed=cfg.training.seed))
    return cfg.model
