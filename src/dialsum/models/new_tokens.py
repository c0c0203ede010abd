"""Trainable rows for newly added tokens without touching the frozen vocabulary matrix.

Added placeholder tokens (`#Person1#` ...) need trainable embedding (and, for tied models, output) rows. Instead
of copying or differentiating the whole vocabulary matrix, a small fp32 `delta` of shape (new tokens, hidden)
is added on the fly: to the embedding output where an id is new, and to the logits of the new ids' columns.
The delta starts at zero, so the rows start as whatever the base embedding holds for them (e.g. the mean of
their former pieces). Tied models share one delta between input and output; untied ones get two.

`save_rows` writes the final rows (base + delta) beside the adapter; `load_rows` writes them back into a freshly
loaded base; `merged_weight` gives the embedding with the rows folded in, for a dense inference copy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ROWS_FILE = "new_token_rows.safetensors"


class DeltaEmbedding(nn.Module):
    """`base(ids)` plus `delta[id - first]` where `first <= id < first + n`."""

    def __init__(self, base: nn.Embedding, delta: nn.Parameter, first: int):
        super().__init__()
        self.base, self.delta, self.first = base, delta, first

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids)
        rel = ids - self.first
        hit = (rel >= 0) & (rel < self.delta.shape[0])
        extra = nn.functional.embedding(rel.clamp(0, self.delta.shape[0] - 1), self.delta)
        return out + (extra * hit.unsqueeze(-1)).to(out.dtype)


class DeltaHead(nn.Module):
    """`base(h)` with `h @ delta.T` added to the logits of ids `first .. first + n`."""

    def __init__(self, base: nn.Linear, delta: nn.Parameter, first: int):
        super().__init__()
        self.base, self.delta, self.first = base, delta, first

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.base(hidden)
        cols = slice(self.first, self.first + self.delta.shape[0])
        out[..., cols] = out[..., cols] + (hidden.to(self.delta.dtype) @ self.delta.T).to(out.dtype)
        return out


def _tied(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def attach(model, first: int, count: int) -> None:
    """Give ids `first .. first + count` trainable fp32 deltas on the (PEFT-unwrapped) transformers `model`."""
    if count <= 0:
        return
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    device = emb.weight.device
    delta = nn.Parameter(torch.zeros(count, emb.weight.shape[1], device=device))
    tied = _tied(model)
    model.set_input_embeddings(DeltaEmbedding(emb, delta, first))
    if head is not None:
        head_delta = delta if tied else nn.Parameter(torch.zeros(count, head.weight.shape[1], device=device))
        model.set_output_embeddings(DeltaHead(head, head_delta, first))


def _wrappers(model) -> tuple[DeltaEmbedding | None, DeltaHead | None]:
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    return (emb if isinstance(emb, DeltaEmbedding) else None), (head if isinstance(head, DeltaHead) else None)


def merged_weight(module: nn.Module) -> torch.Tensor:
    """The weight of an embedding/head with any delta folded in (a new tensor only where there is a delta)."""
    if not isinstance(module, (DeltaEmbedding, DeltaHead)):
        return module.weight
    weight = module.base.weight.detach().clone()
    rows = slice(module.first, module.first + module.delta.shape[0])
    weight[rows] = (weight[rows].float() + module.delta.detach().float()).to(weight.dtype)
    return weight


def save_rows(model, out_dir: Path) -> None:
    """Write the final new-token rows (base + delta) for `load_rows`; nothing when no delta is attached."""
    emb, head = _wrappers(model)
    if emb is None:
        return
    rows = slice(emb.first, emb.first + emb.delta.shape[0])
    tensors = {"embed": merged_weight(emb)[rows].float().contiguous()}
    if head is not None and head.delta is not emb.delta:
        tensors["head"] = merged_weight(head)[rows].float().contiguous()
    save_file(tensors, str(Path(out_dir) / ROWS_FILE), metadata={"first": str(emb.first)})


@torch.no_grad()
def load_rows(model, folder: Path) -> bool:
    """Copy saved new-token rows into `model`'s embedding (and untied head); False when `folder` has none."""
    path = Path(folder) / ROWS_FILE
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        first = int(f.metadata()["first"])
    tensors = load_file(str(path))
    targets = {"embed": model.get_input_embeddings(), "head": model.get_output_embeddings()}
    for key, rows in tensors.items():
        weight = targets[key].weight
        weight[first : first + rows.shape[0]] = rows.to(weight.device, weight.dtype)
    return True
