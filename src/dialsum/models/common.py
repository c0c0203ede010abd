"""Helpers shared by the model families: placeholder tokens, dynamic padding, length-grouped batching."""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch


def add_placeholder_tokens(tokenizer, placeholders: Sequence[str]) -> int:
    """Make `#Person1#`-style tags single, never-split tokens.

    They are added as *normal* added tokens, not special ones, so `skip_special_tokens=True` keeps them.
    """
    vocab = tokenizer.get_vocab()
    return tokenizer.add_tokens([p for p in placeholders if p not in vocab], special_tokens=False)


def pad_batch(
    features: Sequence[dict], pad_id: int, side: str = "right", multiple_of: int = 1, aligned_labels: bool = False
) -> dict:
    """Pad `input_ids` (and `labels`, `attention_mask`) to the longest row in the batch, never further.

    `aligned_labels`: labels run position by position with the inputs (causal LMs), else they are a separate
    target sequence (encoder-decoder) padded to its own longest row.
    """
    longest = max(len(f["input_ids"]) for f in features)
    longest = -(-longest // multiple_of) * multiple_of
    batch: dict[str, list] = {"input_ids": [], "attention_mask": []}
    has_labels = "labels" in features[0]
    if has_labels:
        batch["labels"] = []
        label_len = max(len(f["labels"]) for f in features)
        label_len = -(-label_len // multiple_of) * multiple_of
    for f in features:
        ids = list(f["input_ids"])
        gap = longest - len(ids)
        mask = [1] * len(ids)
        if side == "left":
            batch["input_ids"].append([pad_id] * gap + ids)
            batch["attention_mask"].append([0] * gap + mask)
        else:
            batch["input_ids"].append(ids + [pad_id] * gap)
            batch["attention_mask"].append(mask + [0] * gap)
        if has_labels:
            labels = list(f["labels"])
            if aligned_labels:
                pad = [-100] * gap
                batch["labels"].append(pad + labels if side == "left" else labels + pad)
            else:
                batch["labels"].append(labels + [-100] * (label_len - len(labels)))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int | None, mega: int = 50) -> list[list[int]]:
    """Batches of indices with similar lengths.

    Shuffled into mega-batches of `mega * batch_size`, each sorted by length and cut into batches, then the
    batches are shuffled (the longest batch first, so out-of-memory shows at step one). `seed=None` sorts
    everything by length (used for generation). A chunk's short remainder batch takes its longest rows, where
    a full batch would pad most and need the most memory.
    """
    order = list(range(len(lengths)))
    if seed is None:
        order.sort(key=lambda i: -lengths[i])
        return _cut(order, batch_size)
    rng = random.Random(seed)
    rng.shuffle(order)
    span = mega * batch_size
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: -lengths[i])
        batches += _cut(chunk, batch_size)
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    first = batches.pop(longest)
    rng.shuffle(batches)
    return [first] + batches


def _cut(ordered: list[int], batch_size: int) -> list[list[int]]:
    """Cut a longest-first order into batches, the remainder (if any) first."""
    head = len(ordered) % batch_size
    batches = [ordered[:head]] if head else []
    return batches + [ordered[i : i + batch_size] for i in range(head, len(ordered), batch_size)]


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed (not averaged) over the positions whose label is not -100, computed in fp32.

    Summing lets the trainer divide by the label tokens of the whole accumulation window, so every token weighs
    the same whatever micro-batch it lands in.
    """
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device),
        ignore_index=-100, reduction="sum",
    )


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def batched_generate(
    features: Sequence[dict], batch_size: int, run: Callable[[list[dict]], list[str]], progress=None
) -> list[str]:
    """Generate in length-sorted batches and return outputs in the input order."""
    out: list[str | None] = [None] * len(features)
    for batch in length_grouped_batches([len(f["input_ids"]) for f in features], batch_size, seed=None):
        for i, text in zip(batch, run([features[i] for i in batch])):
            out[i] = text
        if progress is not None:
            progress.update(len(batch))
    return [o or "" for o in out]
