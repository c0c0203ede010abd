"""Encoder-decoder summarizers (KoBART and friends): full fine-tuning of a seq2seq model."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from dialsum.config import EncoderDecoderConfig
from dialsum.data import Example
from dialsum.errors import ConfigError
from dialsum.models import decoding, trained
from dialsum.models.common import (
    add_placeholder_tokens,
    budgeted_generate,
    cut_targets,
    fit_embeddings,
    pad_batch,
    report_cut,
    seed_everything,
    token_loss_sum,
)
from dialsum.settings import get_settings


def load_tokenizer(cfg: EncoderDecoderConfig, source: str, placeholders: Sequence[str], adapter: Path | None = None):
    """The tokenizer with placeholder tokens; returns (tokenizer, {new id: former piece ids})."""
    revision = None if adapter else cfg.revision
    tok_source = str(adapter) if adapter else cfg.tokenizer or source
    tok = AutoTokenizer.from_pretrained(
        tok_source, revision=revision, token=get_settings().hub_token(), trust_remote_code=cfg.trust_remote_code
    )
    return tok, add_placeholder_tokens(tok, placeholders)


def load(cfg: EncoderDecoderConfig, source: str, placeholders: Sequence[str], adapter: Path | None = None):
    """Load model and tokenizer from `source` (hub id or folder), or from a fine-tuned folder `adapter`."""
    seed_everything(cfg.training.seed)
    tok, pieces = load_tokenizer(cfg, source, placeholders, adapter)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        str(adapter or source),
        revision=None if adapter else cfg.revision,
        token=get_settings().hub_token(),
        trust_remote_code=cfg.trust_remote_code,
        dtype=torch.float32,
    )
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and cfg.max_source_length > positions:
        raise ConfigError(
            f"{cfg.name}: max_source_length {cfg.max_source_length} exceeds the checkpoint's {positions} positions"
        )
    fit_embeddings(model, tok, pieces)
    model.generation_config = generation_config(cfg, model, tok)
    return model, tok


def input_overhead(cfg: EncoderDecoderConfig, tok) -> int:
    """Tokens an input adds around the dialogue (bos, eos)."""
    return (tok.bos_token_id is not None) + 1


def input_limit(cfg: EncoderDecoderConfig) -> tuple[str, int]:
    return "max_source_length", cfg.max_source_length


def target_ids(cfg: EncoderDecoderConfig, tok, summaries: Sequence[str]) -> list[list[int]]:
    """The full token sequence the decoder must produce for each summary: its pieces, then eos (never cut)."""
    return [ids + [tok.eos_token_id] for ids in tok(list(summaries), add_special_tokens=False)["input_ids"]]


def build_features(cfg: EncoderDecoderConfig, tok, examples: Sequence[Example], with_labels: bool) -> list[dict]:
    """Token ids per example: `<s> dialogue </s>` (dialogue cut, and reported) and, for training, `summary </s>`."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = [tok.eos_token_id]
    room = cfg.max_source_length - len(bos) - 1
    dialogues = tok([ex.dialogue for ex in examples], add_special_tokens=False)["input_ids"]
    report_cut(
        cfg.name, "dialogues", [len(d) + len(bos) + 1 for d in dialogues], cfg.max_source_length, "max_source_length"
    )
    features = [{"input_ids": bos + ids[:room] + eos} for ids in dialogues]
    if with_labels:
        targets = target_ids(cfg, tok, [ex.summary or "" for ex in examples])
        for feat, ids in zip(features, cut_targets(cfg.name, targets, cfg.max_target_length)):
            feat["labels"] = ids
    return features


def collate(tok, features: Sequence[dict], for_generation: bool = False, multiple_of: int = 1) -> dict:
    return pad_batch(features, tok.pad_token_id, side="right", multiple_of=multiple_of)


def stop_ids(cfg: EncoderDecoderConfig, tok, model=None) -> list[int]:
    """Every id that ends generation: the tokenizer's eos and the checkpoint's declared end tokens."""
    return decoding.end_token_ids(tok, *(decoding.model_configs(model) if model is not None else ()))


def generate_kwargs(cfg: EncoderDecoderConfig, model, tok) -> dict:
    """The `generate()` settings (`trained.generate_kwargs`): the tokenizer's eos is the one forced at the limit."""
    return trained.generate_kwargs(cfg.generation, stop_ids(cfg, tok, model), tok.eos_token_id, tok.pad_token_id)


def target_count(batch: dict) -> int:
    """Label tokens the loss covers (every non-padding summary token)."""
    return int((batch["labels"] != -100).sum())


def loss(model, batch: dict, label_smoothing: float = 0.0) -> torch.Tensor:
    """Teacher-forced cross-entropy summed over the summary tokens of the batch (optionally label-smoothed)."""
    labels = batch["labels"]
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=decoder_input_ids,
        use_cache=False,
    ).logits
    return token_loss_sum(logits, labels, label_smoothing)


def inference_model(cfg: EncoderDecoderConfig, model):
    """The model to generate with: the trained model itself (nothing to merge)."""
    return model


@torch.inference_mode()
def generate(cfg: EncoderDecoderConfig, model, tok, features: Sequence[dict], progress=None) -> list[str]:
    """Summaries for `features`, in order, generated in length-sorted batches."""
    model.eval()
    device = next(model.parameters()).device
    g = cfg.generation
    gen = generation_config(cfg, model, tok)
    exempt = no_repeat_exempt_ids(cfg, tok) if g.no_repeat_ngram_size else []

    def run(batch: list[dict]) -> list[str]:
        inputs = {k: v.to(device) for k, v in collate(tok, [{"input_ids": f["input_ids"]} for f in batch]).items()}
        processors = decoding.logits_processors(g.no_repeat_ngram_size, exempt, len(tok))
        out = model.generate(**inputs, generation_config=gen, logits_processor=processors)
        return decoding.decode(tok, out)

    return budgeted_generate(features, g, run, progress)


@torch.inference_mode()
def generate_candidates(
    cfg: EncoderDecoderConfig, model, tok, features: Sequence[dict], progress=None
) -> tuple[list[str], list[list[dict]]]:
    """The summaries `generate` returns, and `generation.num_candidates` candidates per dialogue (beam n-best by
    default, or seeded sampling), each {"text", "logprob", "tokens"}; in length-sorted batches, in order."""
    model.eval()
    device = next(model.parameters()).device
    g = cfg.generation
    gen, cand = generation_config(cfg, model, tok), candidate_generation_config(cfg, model, tok)
    exempt = no_repeat_exempt_ids(cfg, tok) if g.no_repeat_ngram_size else []
    stops = stop_ids(cfg, tok, model)

    def run(batch: list[dict]) -> list[tuple[str, list[dict]]]:
        inputs = {k: v.to(device) for k, v in collate(tok, [{"input_ids": f["input_ids"]} for f in batch]).items()}
        processors = decoding.logits_processors(g.no_repeat_ngram_size, exempt, len(tok))
        return decoding.draw_candidates(model, tok, inputs, gen, cand, processors, stops)

    copies = 1 if cfg.candidate_method == "beam" else g.num_candidates
    with decoding.seeded(cfg.training.seed):
        pairs = budgeted_generate(features, g, run, progress, copies)
    return [text for text, _ in pairs], [candidates for _, candidates in pairs]


def save(model, tok, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


# The shared surface (models.protocols: Summarizer and the generation configs), bound to this family; session is
# the (model, tokenizer) pair.
TRAINABLE = True
summarize, summarize_candidates, generation_settings, generation_config, candidate_generation_config = trained.bind(
    sys.modules[__name__]
)
no_repeat_exempt_ids = trained.no_repeat_exempt_ids
