"""Encoder-decoder summarizers (KoBART and friends): full fine-tuning of a seq2seq model."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from dialsum.config import EncoderDecoderConfig
from dialsum.data import Example
from dialsum.models.common import add_placeholder_tokens, batched_generate, pad_batch, token_loss_sum
from dialsum.settings import get_settings


def load(cfg: EncoderDecoderConfig, source: str, placeholders: Sequence[str], adapter: Path | None = None):
    """Load model and tokenizer from `source` (hub id or folder), or from a fine-tuned folder `adapter`."""
    token, revision = get_settings().hub_token(), None if adapter else cfg.revision
    tok_source = str(adapter) if adapter else cfg.tokenizer or source
    tok = AutoTokenizer.from_pretrained(tok_source, revision=revision, token=token, trust_remote_code=cfg.trust_remote_code)
    added = add_placeholder_tokens(tok, placeholders)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        str(adapter or source), revision=revision, token=token, trust_remote_code=cfg.trust_remote_code,
        dtype=torch.float32,
    )
    if added or model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok))
    return model, tok


def build_features(cfg: EncoderDecoderConfig, tok, examples: Sequence[Example], with_labels: bool) -> list[dict]:
    """Token ids per example: `<s> dialogue </s>` (dialogue truncated) and, for training, `summary </s>` labels."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = [tok.eos_token_id]
    room = cfg.max_source_length - len(bos) - 1
    dialogues = tok([ex.dialogue for ex in examples], add_special_tokens=False)["input_ids"]
    features = [{"input_ids": bos + ids[:room] + eos} for ids in dialogues]
    if with_labels:
        summaries = tok([ex.summary or "" for ex in examples], add_special_tokens=False)["input_ids"]
        for feat, ids in zip(features, summaries):
            feat["labels"] = ids[: cfg.max_target_length - 1] + eos
    return features


def collate(tok, features: Sequence[dict], for_generation: bool = False, multiple_of: int = 1) -> dict:
    return pad_batch(features, tok.pad_token_id, side="right", multiple_of=multiple_of)


def target_count(batch: dict) -> int:
    """Label tokens the loss covers (every non-padding summary token)."""
    return int((batch["labels"] != -100).sum())


def loss(model, batch: dict) -> torch.Tensor:
    """Teacher-forced cross-entropy summed over the summary tokens of the batch."""
    labels = batch["labels"]
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids, use_cache=False).logits
    return token_loss_sum(logits, labels)


def inference_model(cfg: EncoderDecoderConfig, model):
    """The model to generate with: the trained model itself (nothing to merge)."""
    return model


@torch.inference_mode()
def generate(cfg: EncoderDecoderConfig, model, tok, features: Sequence[dict], progress=None) -> list[str]:
    """Summaries for `features`, in order, generated in length-sorted batches."""
    model.eval()
    device = next(model.parameters()).device
    g = cfg.generation

    def run(batch: list[dict]) -> list[str]:
        inputs = {k: v.to(device) for k, v in collate(tok, [{"input_ids": f["input_ids"]} for f in batch]).items()}
        out = model.generate(
            **inputs, max_new_tokens=g.max_new_tokens, num_beams=g.num_beams, do_sample=False,
            no_repeat_ngram_size=g.no_repeat_ngram_size, repetition_penalty=g.repetition_penalty,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            decoder_start_token_id=model.config.decoder_start_token_id,
        )
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    return batched_generate(features, g.batch_size, run, progress, max_tokens=g.max_tokens_per_batch,
                            new_tokens=g.max_new_tokens)


def save(model, tok, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
