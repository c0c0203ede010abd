"""Decoding pieces shared by the model families: the no-repeat rule, end tokens, resolved settings, detokenizing.

The no-repeat rule here differs from the stock one in two ways that matter for this data:
- n-grams that contain a placeholder (`#Person1#`) or a whitespace-only piece never count, so naming a speaker
  again is never blocked;
- only generated tokens count, never the prompt of a causal LM (a summary repeats the dialogue's words).
`blocked_at` applies the same rule to a finished sequence, so preflight checks exactly what generation enforces.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers import LogitsProcessor

from dialsum.data import PLACEHOLDER_RE


def whitespace_ids(tok) -> set[int]:
    """Ids whose text is only whitespace ('▁', 'Ġ', '\\n' pieces)."""
    pieces = tok.batch_decode([[i] for i in range(len(tok))], clean_up_tokenization_spaces=False)
    specials = set(tok.all_special_ids)
    return {i for i, text in enumerate(pieces) if not text.strip() and i not in specials}


def placeholder_ids(tok) -> list[int]:
    """Ids of the added placeholder tokens, in both forms (`#Person1#`, ` #Person1#`)."""
    return sorted(i for text, i in tok.get_added_vocab().items() if PLACEHOLDER_RE.fullmatch(text.strip()))


def exempt_ids(tok, placeholder_ids: Iterable[int]) -> list[int]:
    """Ids that never make an n-gram repeat-blocked: placeholders and whitespace-only pieces."""
    return sorted(whitespace_ids(tok) | set(placeholder_ids))


def blocked_at(ids: Sequence[int], n: int, exempt: Iterable[int]) -> int | None:
    """First position whose token the no-repeat rule would forbid after `ids[:pos]`, or None if none is."""
    if n <= 0:
        return None
    exempt = set(exempt)
    seen: set[tuple[int, ...]] = set()
    for end in range(n, len(ids) + 1):
        gram = tuple(ids[end - n : end])
        if exempt.intersection(gram):
            continue
        if gram in seen:
            return end - 1
        seen.add(gram)
    return None


class ExemptNoRepeatNGram(LogitsProcessor):
    """Forbid repeating an n-gram of generated tokens, unless it holds an exempt (placeholder/whitespace) id.

    `start` is where generated tokens begin in `input_ids` (the padded prompt length of a causal LM; 0 for an
    encoder-decoder's decoder ids).
    """

    def __init__(self, n: int, exempt: Iterable[int], vocab_size: int, start: int = 0):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n, self.start = n, start
        self.exempt = torch.zeros(max(vocab_size, max(exempt, default=0) + 1), dtype=torch.bool)
        self.exempt[list(exempt)] = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        seq = input_ids[:, self.start :]
        n = self.n
        if seq.shape[1] < n:
            return scores
        exempt = self.exempt.to(seq.device)
        windows = seq.unfold(1, n, 1)  # [batch, positions, n]
        prefix = seq[:, seq.shape[1] - (n - 1) :].unsqueeze(1)  # the last n-1 tokens
        match = (windows[:, :, : n - 1] == prefix).all(-1)
        ok = ~exempt[windows.clamp(min=0, max=exempt.numel() - 1)].any(-1)
        rows, cols = torch.nonzero(match & ok, as_tuple=True)
        if rows.numel():
            banned = windows[rows, cols, n - 1]
            keep = banned < scores.shape[1]
            scores = scores.clone()
            scores[rows[keep], banned[keep]] = -float("inf")
        return scores


def end_token_ids(tok, *configs, extra: Sequence[int] = ()) -> list[int]:
    """Every id that ends a generation: `extra` (ours) first, then the tokenizer's eos and each config's eos."""
    ids = list(extra) + [tok.eos_token_id]
    for conf in configs:
        value = getattr(conf, "eos_token_id", None) if conf is not None else None
        ids += value if isinstance(value, (list, tuple)) else [value]
    return list(dict.fromkeys(i for i in ids if i is not None and i != tok.unk_token_id))


def model_configs(model) -> tuple:
    """The checkpoint's model config and generation config (through PEFT wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "config", None), getattr(base, "generation_config", None)


def resolve_generation_config(model, settings: dict) -> HFGenerationConfig:
    """The checkpoint's generation config with every setting we decide written over it.

    `generate()` fills what a passed config leaves unset from the checkpoint, so everything that changes the
    output is set here explicitly; the result is exactly what runs, and what the run folder records.
    """
    _, checkpoint = model_configs(model)
    resolved = HFGenerationConfig.from_dict(checkpoint.to_dict()) if checkpoint is not None else HFGenerationConfig()
    for key in ("temperature", "top_k", "top_p", "min_p", "typical_p"):
        setattr(resolved, key, None)  # sampling is off; stale sampling values only trigger warnings
    defaults = dict(do_sample=False, min_length=0, no_repeat_ngram_size=0,
                    encoder_no_repeat_ngram_size=0, num_return_sequences=1)
    settings = {**defaults, **settings}
    if settings.get("num_beams", resolved.num_beams) == 1:  # beam-only settings would only draw warnings
        settings.update(early_stopping=False, length_penalty=1.0)
    resolved.update(**settings)
    return resolved


class SuppressFrom(LogitsProcessor):
    """Never generate an id from `first` on: embedding rows past the tokenizer (vocabulary padding). A slice, where
    transformers' `suppress_tokens` tests every vocabulary id against the list at each step (0.1-0.3 s on a CPU)."""

    def __init__(self, first: int):
        self.first = first

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] > self.first:
            scores = scores.clone()
            scores[:, self.first :] = -float("inf")
        return scores


def logits_processors(no_repeat: int, exempt: Sequence[int], vocab_size: int, start: int = 0) -> list:
    return [ExemptNoRepeatNGram(no_repeat, exempt, vocab_size, start)] if no_repeat > 0 else []


def decode(tok, ids) -> list[str]:
    """Text of generated ids: special tokens dropped, no space clean-up (it would rewrite the summary)."""
    texts = tok.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [t.strip() for t in texts]
