"""The model-type dispatcher: one module per family, picked by the config's `type`, plus what every family
shares (decoding rules, new-token rows, merging, memory estimates, tiny models, stand-ins of the real profiles,
pinned hub bases) and `preflight`, which drives a family's tokenizer surface. May import data and the foundations; never storage or any layer above.

Each family module exposes the same surface: `load`, `build_features`, `collate`, `target_count`, `loss`,
`inference_model`, `generate`, `generate_candidates` (MBR candidates with log-probabilities) and `save`; for
preflight and the run record also `load_tokenizer`, `input_overhead`, `input_limit`, `target_ids`, `stop_ids`,
`generation_config`, `candidate_generation_config` and `no_repeat_exempt_ids`.
Adding a model of a known family is one YAML file in configs/models/.
"""

from __future__ import annotations

from types import ModuleType

from dialsum.config import CausalLMConfig, EncoderDecoderConfig
from dialsum.models import causal_lm, encoder_decoder

REGISTRY: dict[str, ModuleType] = {
    "encoder_decoder": encoder_decoder,
    "causal_lm": causal_lm,
}


def family(cfg: EncoderDecoderConfig | CausalLMConfig) -> ModuleType:
    return REGISTRY[cfg.type]


def checkpoint_source(cfg: EncoderDecoderConfig | CausalLMConfig) -> str:
    """Where base weights come from: a locally built tiny model, or the configured hub id / path."""
    if cfg.tiny is not None:
        from dialsum.models.tiny import build_tiny

        return str(build_tiny(cfg.name, cfg.tiny, seed=cfg.training.seed))
    return cfg.model
