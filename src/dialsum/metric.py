"""The competition metric: ROUGE-1/2/L F1 over Korean morphemes, averaged over references.

rouge-score's default tokenizer drops Hangul, so a kiwipiepy morpheme tokenizer is plugged in. Placeholders
such as `#Person1#` are kept as one token (kiwipiepy would otherwise split them as hashtags).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from rouge_score import rouge_scorer

_PLACEHOLDER_SPLIT = re.compile(r"(#[A-Za-z][A-Za-z0-9]*#)")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()


def kiwi():
    """The process's one Kiwi analyser (loading it takes seconds), shared with whoever else needs morphemes."""
    return _kiwi()


def _pieces(text: str) -> list[str]:
    """The text cut around placeholders, blank pieces dropped: each piece is a placeholder or a span for Kiwi."""
    return [piece for piece in _PLACEHOLDER_SPLIT.split(text) if piece.strip()]


@lru_cache(maxsize=65536)
def morphemes(text: str) -> tuple[str, ...]:
    tokens: list[str] = []
    for piece in _pieces(text):
        if _PLACEHOLDER_SPLIT.fullmatch(piece):
            tokens.append(piece)
        else:
            tokens.extend(t.form for t in _kiwi().tokenize(piece))
    return tuple(tokens)


def morphemes_many(texts: Sequence[str]) -> list[tuple[str, ...]]:
    """`morphemes` of every text, equal to calling it on each; each distinct span goes through Kiwi once, in
    one batch that Kiwi spreads over its worker threads (about twice as fast on two cores)."""
    spans = list(
        dict.fromkeys(p for text in dict.fromkeys(texts) for p in _pieces(text) if not _PLACEHOLDER_SPLIT.fullmatch(p))
    )
    analysed = dict(zip(spans, (tuple(t.form for t in result) for result in _kiwi().tokenize(spans)))) if spans else {}
    done: dict[str, tuple[str, ...]] = {}
    for text in texts:
        if text not in done:
            done[text] = tuple(
                token
                for piece in _pieces(text)
                for token in ((piece,) if _PLACEHOLDER_SPLIT.fullmatch(piece) else analysed[piece])
            )
    return [done[text] for text in texts]


class MorphemeTokenizer:
    """rouge-score tokenizer protocol: `tokenize(text) -> list[str]`."""

    def tokenize(self, text: str) -> list[str]:
        return list(morphemes(text))


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=MorphemeTokenizer())


def pair_f1(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 of one prediction against one reference (0 for an empty side)."""
    scores = _scorer().score(reference, prediction)
    return {k: scores[k].fmeasure for k in ROUGE_TYPES}


def similarity(a: str, b: str) -> float:
    """Competition score of `a` against `b`, on 0..100."""
    return 100.0 * sum(pair_f1(a, b).values()) / len(ROUGE_TYPES)


def row_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Each row's competition score (0..100): the per-row terms whose mean is `score(...)["score"]`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return [similarity(pred or "", ref) for pred, ref in zip(predictions, references)]


def score(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE F1 per type (0..1), each row averaged over its references, and `score` = 100 × mean(R1, R2, RL)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError("a row has no reference")
        for ref in refs:
            for k, v in pair_f1(pred or "", ref).items():
                totals[k] += v / len(refs)
    n = max(len(predictions), 1)
    result = {k: totals[k] / n for k in ROUGE_TYPES}
    result["score"] = 100.0 * sum(result.values()) / len(ROUGE_TYPES)
    return result
