"""Decoding pieces shared by the model families: the no-repeat rule, end tokens, resolved settings, detokenizing,
and candidates for MBR (beam n-best or seeded sampling, each with its log-probability).

The no-repeat rule here differs from the stock one in two ways that matter for this data:
- n-grams that contain a placeholder (`#Person1#`) or a whitespace-only piece never count, so naming a speaker
  again is never blocked;
- only generated tokens count, never the prompt of a causal LM (a summary repeats the dialogue's words).
`blocked_at` applies the same rule to a finished sequence, so preflight checks exactly what generation enforces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

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
    defaults = dict(
        do_sample=False, min_length=0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, num_return_sequences=1
    )
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


# ---------------------------------------------------------------- candidates for MBR


def candidate_settings(method: str, g) -> dict:
    """generate() settings that draw `g.num_candidates` candidates per dialogue with `method`: the n best beams of
    the configured beam search, or ancestral sampling (ε-sampling: tokens below `candidate_epsilon` probability
    are never drawn) at `candidate_temperature`, with no top-k or top-p cut."""
    if method == "beam":
        return {"num_return_sequences": g.num_candidates, "return_dict_in_generate": True}
    settings = {
        "do_sample": True,
        "num_beams": 1,
        "num_return_sequences": g.num_candidates,
        "top_k": 0,
        "top_p": 1.0,
        "temperature": g.candidate_temperature,
        "return_dict_in_generate": True,
    }
    if method == "epsilon":
        settings["epsilon_cutoff"] = g.candidate_epsilon
    return settings


@contextmanager
def seeded(seed: int):
    """Sampling inside draws from torch's RNG seeded with `seed`; the RNG state outside is left as it was."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class SequenceLogprobs(LogitsProcessor):
    """Records each generated token's log-probability under the decoding distribution: the model's softmax at
    temperature 1 after the rules that come before it (no-repeat, forced end, suppressed ids), so sampling
    warpers (temperature, ε) do not change it. Add it last to `logits_processor`; it changes no score.

    Sampling and greedy rows stay in place, so each step's token is read at the next call (and the last one by
    `totals`). Beam rows move between steps: each row's `keep` best log-probabilities are kept per step (a beam
    can only continue with one of them) and `totals` follows `beam_indices` back through them.
    """

    def __init__(self, stops: Sequence[int], beams: int = 1):
        self.stops = torch.tensor(sorted(set(stops)), dtype=torch.long)
        self.beams = beams
        self.keep = max(2, 1 + len(self.stops)) * beams
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.calls = 0
        self._last: torch.Tensor | None = None
        self._sum = self._count = self._done = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = torch.log_softmax(scores.float(), dim=-1)
        self.calls += 1
        if self.beams > 1:
            values, ids = logp.topk(min(self.keep, logp.shape[-1]), dim=-1)
            self.steps.append((values, ids))
        else:
            self._take(input_ids[:, -1])
            self._last = logp
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self._last is None:
            return
        if self._sum is None:
            self._sum = torch.zeros(len(tokens), dtype=torch.float64, device=tokens.device)
            self._count = torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)
            self._done = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
        live = ~self._done
        picked = self._last.gather(1, tokens[:, None]).squeeze(1).double()
        self._sum += torch.where(live, picked, torch.zeros_like(picked))
        self._count += live.long()
        self._done |= torch.isin(tokens, self.stops.to(tokens.device))

    def totals(self, sequences: torch.Tensor, beam_indices: torch.Tensor | None = None) -> list[tuple[float, int]]:
        """(log-probability, generated tokens) of each returned sequence, end token included."""
        if self.beams <= 1:
            self._take(sequences[:, -1])
            if self._sum is None:
                return [(0.0, 0)] * len(sequences)
            return list(zip(self._sum.tolist(), self._count.tolist()))
        steps = beam_indices.shape[1]
        tokens = sequences[:, sequences.shape[1] - steps :]
        values = torch.stack([v for v, _ in self.steps[:steps]])  # [steps, rows, keep]
        ids = torch.stack([i for _, i in self.steps[:steps]])
        live = beam_indices >= 0
        at = torch.arange(steps, device=tokens.device).expand_as(beam_indices)
        rows = beam_indices.clamp(min=0)
        match = ids[at, rows] == tokens[..., None]  # [sequences, steps, keep]
        found = torch.where(
            match, values[at, rows].double(), torch.zeros((), dtype=torch.float64, device=tokens.device)
        )
        per_token = torch.where(match.any(-1), found.sum(-1), torch.full_like(found[..., 0], float("nan")))
        total = torch.where(live, per_token, torch.zeros_like(per_token)).sum(-1)
        return list(zip(total.tolist(), live.sum(-1).tolist()))


def draw_candidates(
    model,
    tok,
    inputs: dict,
    prediction,
    candidate,
    processors: list,
    stops: Sequence[int],
    prompt_width: int = 0,
    **extra,
) -> list[tuple[str, list[dict]]]:
    """(prediction, candidates) per input row; generated text starts after `prompt_width` columns (a causal LM's
    padded prompt; 0 for an encoder-decoder). With beam candidates (`candidate.do_sample` off), one beam search
    gives both: the n best beams, the best first, which is exactly the prediction. Sampled candidates come from a
    second generate() call; the prediction is generated as without candidates. Each candidate is
    {"text", "logprob", "tokens"} (see `SequenceLogprobs`)."""
    n = candidate.num_return_sequences
    scorer = SequenceLogprobs(stops, beams=candidate.num_beams if not candidate.do_sample else 1)
    out = model.generate(**inputs, generation_config=candidate, logits_processor=[*processors, scorer], **extra)
    beams = out.beam_indices if scorer.beams > 1 else None
    texts = decode(tok, out.sequences[:, prompt_width:])
    scores = scorer.totals(out.sequences, beams)
    rows = [
        [
            {"text": texts[i], "logprob": round(lp, 4), "tokens": int(count)}
            for i, (lp, count) in enumerate(scores[r * n : (r + 1) * n], start=r * n)
        ]
        for r in range(len(texts) // n)
    ]
    if not candidate.do_sample:
        return [(row[0]["text"], row) for row in rows]
    greedy = model.generate(**inputs, generation_config=prediction, logits_processor=processors, **extra)
    return list(zip(decode(tok, greedy[:, prompt_width:]), rows))
