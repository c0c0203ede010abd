"""Typed experiment configs. YAML is only data: every field is declared and validated here.

`schema` holds the pydantic models (the family is the `type` discriminator), `profiles` finds and loads a profile
(base defaults, the model YAML, command-line overrides) and `overrides` reads `--set KEY=VALUE`. A foundation:
imports only settings and errors.
"""

from dialsum.config.overrides import apply_overrides, parse_override
from dialsum.config.profiles import (
    available_models,
    check_listed_once,
    config_dirs,
    deep_merge,
    did_you_mean,
    dump_config,
    find_config,
    load_model_config,
    overlay_overrides,
    packaged_configs,
    resolve_model_path,
)
from dialsum.config.schema import (
    FAMILIES,
    NAME_PATTERN,
    NAME_RE,
    CausalLMConfig,
    EncoderDecoderConfig,
    GenerationConfig,
    LoraConfig,
    ModelConfig,
    ModelConfigBase,
    QuantizationConfig,
    Strict,
    TinySpec,
    TrainingConfig,
)

# isort: split
from dialsum.config.chat_api import ChatAPIConfig  # after schema, which it builds on

__all__ = [
    "FAMILIES",
    "NAME_PATTERN",
    "NAME_RE",
    "CausalLMConfig",
    "ChatAPIConfig",
    "EncoderDecoderConfig",
    "GenerationConfig",
    "LoraConfig",
    "ModelConfig",
    "ModelConfigBase",
    "QuantizationConfig",
    "Strict",
    "TinySpec",
    "TrainingConfig",
    "apply_overrides",
    "available_models",
    "check_listed_once",
    "config_dirs",
    "deep_merge",
    "did_you_mean",
    "dump_config",
    "find_config",
    "load_model_config",
    "overlay_overrides",
    "packaged_configs",
    "parse_override",
    "resolve_model_path",
]
