"""The `Summarizer` surface of the trainable families, built on their own `build_features`, `generate`,
`generate_candidates` and generation configs; `session` is the (model, tokenizer) pair."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Sequence


def summarize(fam: ModuleType, cfg, session: tuple[Any, Any], examples: Sequence, progress=None) -> list[str]:
    model, tok = session
    features = fam.build_features(cfg, tok, examples, with_labels=False)
    return fam.generate(cfg, model, tok, features, progress=progress)


def summarize_candidates(fam: ModuleType, cfg, session: tuple[Any, Any], examples: Sequence,
                         progress=None) -> tuple[list[str], list[list[dict]]]:
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
    record = {"generate": _set(fam.generation_config(cfg, model, tok)), "batch_size": g.batch_size,
              "no_repeat": {"ngram_size": g.no_repeat_ngram_size, "exempt_ids": exempt}}
    if g.num_candidates > 1:
        record["candidates"] = {"method": cfg.candidate_method, "num_candidates": g.num_candidates,
                                "seed": cfg.training.seed,
                                "generate": _set(fam.candidate_generation_config(cfg, model, tok))}
    return record
