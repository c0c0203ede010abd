"""What the trainable families share: the `Summarizer` surface and the generation configs, built on each family's
own `build_features`, `generate`, `generate_candidates` and `generate_kwargs`; `session` is the (model, tokenizer)
pair. A family takes them with `bind`, so each is written here once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from types import ModuleType
from typing import Any

from dialsum.models import decoding


def summarize(fam: ModuleType, cfg, session: tuple[Any, Any], examples: Sequence, progress=None) -> list[str]:
    model, tok = session
    features = fam.build_features(cfg, tok, examples, with_labels=False)
    return fam.generate(cfg, model, tok, features, progress=progress)


def summarize_candidates(
    fam: ModuleType, cfg, session: tuple[Any, Any], examples: Sequence, progress=None
) -> tuple[list[str], list[list[dict]]]:
    model, tok = session
    features = fam.build_features(cfg, tok, examples, with_labels=False)
    return fam.generate_candidates(cfg, model, tok, features, progress=progress)


def _set(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if v is not None and not k.startswith("_")}


def generation_settings(fam: ModuleType, cfg, session: tuple[Any, Any]) -> dict:
    """The generation settings as transformers resolves them, plus our rules (no-repeat exemptions, candidates)."""
    model, tok = session
    g = cfg.generation
    exempt = fam.no_repeat_exempt_ids(cfg, tok) if g.no_repeat_ngram_size else []
    record = {
        "generate": _set(fam.generation_config(cfg, model, tok)),
        "batch_size": g.batch_size,
        "no_repeat": {"ngram_size": g.no_repeat_ngram_size, "exempt_ids": exempt},
    }
    if g.num_candidates > 1:
        record["candidates"] = {
            "method": cfg.candidate_method,
            "num_candidates": g.num_candidates,
            "seed": cfg.training.seed,
            "generate": _set(fam.candidate_generation_config(cfg, model, tok)),
        }
    return record


def generate_kwargs(g, stops: Sequence[int], forced_eos_id: int | None, pad_token_id: int | None) -> dict:
    """The `generate()` settings of a trainable family from its `generation` block: generation ends at any of
    `stops`, and `forced_eos_id` is forced at the length limit when `g.forced_eos`."""
    return {
        "max_new_tokens": g.max_new_tokens,
        "num_beams": g.num_beams,
        "repetition_penalty": g.repetition_penalty,
        "length_penalty": g.length_penalty,
        "early_stopping": g.early_stopping,
        "forced_eos_token_id": forced_eos_id if g.forced_eos else None,
        "eos_token_id": stops,
        "pad_token_id": pad_token_id,
    }


def generation_config(fam: ModuleType, cfg, model, tok):
    """The transformers GenerationConfig that `generate` runs with; every setting that matters is explicit."""
    return decoding.resolve_generation_config(model, fam.generate_kwargs(cfg, model, tok))


def candidate_generation_config(fam: ModuleType, cfg, model, tok):
    """The GenerationConfig that draws `generation.num_candidates` candidates (`candidate_method`)."""
    extra = decoding.candidate_settings(cfg.candidate_method, cfg.generation)
    return decoding.resolve_generation_config(model, {**fam.generate_kwargs(cfg, model, tok), **extra})


def no_repeat_exempt_ids(cfg, tok) -> list[int]:
    """Ids the no-repeat rule never counts: placeholders and whitespace-only pieces."""
    return decoding.exempt_ids(tok, decoding.placeholder_ids(tok))


def bind(fam: ModuleType) -> tuple[Callable[..., Any], ...]:
    """The shared functions with `fam` bound, in this order: summarize, summarize_candidates, generation_settings,
    generation_config, candidate_generation_config."""
    shared = (summarize, summarize_candidates, generation_settings, generation_config, candidate_generation_config)
    return tuple(partial(function, fam) for function in shared)
