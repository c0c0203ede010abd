"""Helpers shared by the model families: seeding, placeholder tokens and their rows, dynamic padding, batching."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from tokenizers import Tokenizer

if TYPE_CHECKING:
    from dialsum.config import GenerationConfig

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): called before a model is built, so new weights are seeded.
    What transformers' `set_seed` does, without importing its trainer (and with it peft and bitsandbytes)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def placeholder_forms(placeholders: Sequence[str]) -> list[str]:
    """Each tag alone and with the space before it, so neither the tag nor that space becomes a stray piece."""
    return [form for p in placeholders for form in (p, f" {p}")]


def add_placeholder_tokens(tokenizer, placeholders: Sequence[str]) -> dict[int, list[int]]:
    """Make `#Person1#`-style tags single, never-split tokens; returns {new id: the ids its text split into}.

    Tags are added as *normal* added tokens, not special ones, so `skip_special_tokens=True` keeps them. Each tag
    comes in two forms, `#Person1#` and ` #Person1#` (the word-initial form, like a BPE word's leading space),
    and a Metaspace tokenizer stops prefixing '▁' to the text after a tag, so `#Person2#는` is two pieces and
    decodes back to `#Person2#는`.
    """
    _prefix_space_only_at_start(tokenizer)
    vocab = tokenizer.get_vocab()
    new = [f for f in dict.fromkeys(placeholder_forms(placeholders)) if f not in vocab]
    pieces = {f: tokenizer(f, add_special_tokens=False)["input_ids"] for f in new}
    tokenizer.add_tokens(new, special_tokens=False)
    return {tokenizer.convert_tokens_to_ids(f): pieces[f] for f in new}


def _prefix_space_only_at_start(tokenizer) -> None:
    """Metaspace `prepend_scheme: always` adds '▁' to every span after an added token; `first` only at the start."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return
    state = json.loads(backend.to_str())
    changed = False

    def walk(node) -> None:
        nonlocal changed
        if isinstance(node, dict):
            if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "always":
                node["prepend_scheme"], changed = "first", True
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(state.get("pre_tokenizer"))
    walk(state.get("decoder"))
    if changed:
        rebuilt = Tokenizer.from_str(json.dumps(state))
        backend.pre_tokenizer, backend.decoder = rebuilt.pre_tokenizer, rebuilt.decoder


@torch.no_grad()
def init_new_rows(model, pieces: dict[int, list[int]]) -> None:
    """Each new token's input row (and output row, if untied) becomes the mean of its former pieces' rows."""
    if not pieces:
        return
    layers = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != layers[0].weight.data_ptr():
        layers.append(out)
    for layer in layers:
        weight = layer.weight
        for new_id, old_ids in pieces.items():
            source = [i for i in old_ids if i < weight.shape[0]]
            if source and new_id < weight.shape[0]:
                weight[new_id] = weight[source].float().mean(0).to(weight.dtype)


def fit_embeddings(model, tok, pieces: dict[int, list[int]]) -> None:
    """Grow the embeddings to the tokenizer if needed, then mean-initialise the new tokens' rows."""
    if model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    init_new_rows(model, pieces)


def report_cut(name: str, what: str, lengths: Sequence[int], limit: int, setting: str) -> int:
    """Log how many rows exceed `limit` tokens (they will be cut); returns the count."""
    cut = sum(1 for n in lengths if n > limit)
    if cut:
        log.warning(
            "%s: %d of %d %s exceed %s=%d tokens and are cut (longest %d)",
            name,
            cut,
            len(lengths),
            what,
            setting,
            limit,
            max(lengths),
        )
    return cut


def cut_targets(name: str, targets: Sequence[list[int]], limit: int) -> list[list[int]]:
    """Target sequences cut to `limit` tokens (`max_target_length`), each keeping its last token (the end token, so
    a cut summary still ends); how many were cut is logged."""
    report_cut(name, "summaries", [len(t) for t in targets], limit, "max_target_length")
    return [list(t) if len(t) <= limit else t[: limit - 1] + t[-1:] for t in targets]


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


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int | None, mega: int = 50
) -> list[list[int]]:
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


def token_budget_batches(
    lengths: Sequence[int],
    max_tokens: int,
    seed: int | None,
    mega: int = 50,
    multiple_of: int = 1,
    max_rows: int | None = None,
    ranks: int = 1,
) -> list[list[int]]:
    """Length-grouped batches whose padded size (rows x longest row, rounded up to `multiple_of`) stays within
    `max_tokens`: many short rows or a few long ones per batch, so every micro-batch costs about the same.

    Same grouping as `length_grouped_batches`: shuffled chunks of about `mega` batches, each sorted by length and
    cut greedily longest-first, then the batches shuffled with the longest first. `seed=None` sorts everything by
    length (generation). `max_rows` caps rows per batch as well. `ranks` > 1 plans global batches for data
    parallelism, which deals every `ranks`-th row to each rank: a batch of k rows may then hold up to
    `ranks` x `max_tokens`, but no rank's share (at most ceil(k / ranks) rows, none longer than the batch's
    first) exceeds `max_tokens`. Every row lands in exactly one batch; a row longer than the budget is an error.
    """
    if not lengths:
        return []
    padded = [-(-n // multiple_of) * multiple_of for n in lengths]
    worst = max(padded)
    if worst > max_tokens:
        raise ValueError(f"max_tokens_per_batch {max_tokens} is smaller than the longest row ({worst} tokens)")
    order = list(range(len(lengths)))
    if seed is None:
        return _cut_budget(sorted(order, key=lambda i: -padded[i]), padded, max_tokens, max_rows, ranks)
    rng = random.Random(seed)
    rng.shuffle(order)
    span = max(1, mega * max_tokens * ranks * len(padded) // max(sum(padded), 1))
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: -padded[i])
        batches += _cut_budget(chunk, padded, max_tokens, max_rows, ranks)
    longest = max(range(len(batches)), key=lambda b: padded[batches[b][0]])
    first = batches.pop(longest)
    rng.shuffle(batches)
    return [first] + batches


def _cut_budget(
    ordered: list[int], padded: Sequence[int], max_tokens: int, max_rows: int | None = None, ranks: int = 1
) -> list[list[int]]:
    """Cut a longest-first order greedily: a batch grows while each rank's share (ceil(rows / ranks) rows of
    at most its first row's length) fits the budget."""
    batches: list[list[int]] = []
    cap = max_rows or len(ordered)
    for i in ordered:
        if (
            batches
            and len(batches[-1]) < cap
            and -(-(len(batches[-1]) + 1) // ranks) * padded[batches[-1][0]] <= max_tokens
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _cut(ordered: list[int], batch_size: int) -> list[list[int]]:
    """Cut a longest-first order into batches, the remainder (if any) first."""
    head = len(ordered) % batch_size
    batches = [ordered[:head]] if head else []
    return batches + [ordered[i : i + batch_size] for i in range(head, len(ordered), batch_size)]


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy summed (not averaged) over the positions whose label is not -100, computed in fp32
    (`label_smoothing` as in torch's cross-entropy).

    Summing lets the trainer divide by the label tokens of the whole accumulation window, so every token weighs
    the same whatever micro-batch it lands in.
    """
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1).to(logits.device),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def batched_generate(
    features: Sequence[dict],
    batch_size: int,
    run: Callable[[list[dict]], list],
    progress=None,
    max_tokens: int | None = None,
    new_tokens: int = 0,
    copies: int = 1,
) -> list:
    """Generate in length-sorted batches and return outputs in the input order.

    With `max_tokens`, a batch holds at most `batch_size` rows and at most `max_tokens` tokens counting each
    row as its padded prompt plus `new_tokens` generated ones (the KV cache it will need), `copies` times over
    (sampled candidates expand each row); else `batch_size` rows.
    """
    out: list = [None] * len(features)
    lengths = [len(f["input_ids"]) for f in features]
    if max_tokens:
        costs = [(n + new_tokens) * copies for n in lengths]
        budget = max(max_tokens, max(costs, default=0))  # one row always fits
        order = token_budget_batches(costs, budget, seed=None, max_rows=batch_size)
    else:
        order = length_grouped_batches(lengths, batch_size, seed=None)
    for batch in order:
        for i, result in zip(batch, run([features[i] for i in batch])):
            out[i] = result
        if progress is not None:
            progress.update(len(batch))
    return [o if o is not None else "" for o in out]


def budgeted_generate(
    features: Sequence[dict],
    generation: GenerationConfig,
    run: Callable[[list[dict]], list],
    progress=None,
    copies: int = 1,
) -> list:
    """`batched_generate` within a model's `generation` settings: at most `batch_size` rows and
    `max_tokens_per_batch` tokens a batch, each row counted as its prompt plus `max_new_tokens`, `copies` times over.
    """
    return batched_generate(
        features,
        generation.batch_size,
        run,
        progress,
        max_tokens=generation.max_tokens_per_batch,
        new_tokens=generation.max_new_tokens,
        copies=copies,
    )
