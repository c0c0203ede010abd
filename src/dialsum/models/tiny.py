"""Build small random-weight models and a locally trained ByteLevel BPE tokenizer, offline.

The result is saved like a hub checkpoint and then loaded through the normal loader, so tests and the demo
exercise the same code path (4-bit loading included) as the real models.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from dialsum.config import TinySpec
from dialsum.data import KNOWN_PLACEHOLDERS, load_splits
from dialsum.settings import get_settings

# Special tokens per architecture: (bos, eos, pad, unk, extra specials, chat template file).
_ARCH_TOKENS = {
    "bart": ("<s>", "</s>", "<pad>", "<unk>", ["<mask>"], None),
    "llama": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        None,
        ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
        "llama3.jinja",
    ),
    "qwen3": (None, "<|im_end|>", "<|endoftext|>", None, ["<|im_start|>", "<think>", "</think>"], "qwen3.jinja"),
}


def _train_tokenizer(spec: TinySpec) -> PreTrainedTokenizerFast:
    bos, eos, pad, unk, extra, template = _ARCH_TOKENS[spec.arch]
    specials = [t for t in (bos, eos, pad, unk) if t] + extra
    splits = load_splits(None)
    texts = [ex.dialogue for ex in splits["train"]] + [ex.summary or "" for ex in splits["train"]]
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        additional_special_tokens=extra,
        model_max_length=spec.max_positions,
    )
    fast.add_tokens(KNOWN_PLACEHOLDERS, special_tokens=False)
    if template:
        fast.chat_template = (resources.files("dialsum.models") / "templates" / template).read_text(encoding="utf-8")
    return fast


# The config keys each architecture gives the spec's sizes: {config key: TinySpec field}.
_BART_SIZES = {"d_model": "hidden_size", "max_position_embeddings": "max_positions"} | {
    f"{side}_{key}": field
    for side in ("encoder", "decoder")
    for key, field in (("layers", "num_layers"), ("attention_heads", "num_heads"), ("ffn_dim", "intermediate_size"))
}
_DECODER_SIZES = dict(
    hidden_size="hidden_size",
    intermediate_size="intermediate_size",
    max_position_embeddings="max_positions",
    num_hidden_layers="num_layers",
    num_attention_heads="num_heads",
    num_key_value_heads="num_kv_heads",
)


def _sizes(spec: TinySpec, keys: dict[str, str]) -> dict[str, int]:
    return {key: getattr(spec, field) for key, field in keys.items()}


def _build_model(spec: TinySpec, tok: PreTrainedTokenizerFast):
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if spec.arch == "bart":
        config = BartConfig(
            **_sizes(spec, _BART_SIZES),
            bos_token_id=tok.bos_token_id,
            decoder_start_token_id=tok.eos_token_id,
            forced_eos_token_id=tok.eos_token_id,
            **common,
        )
        return BartForConditionalGeneration(config)
    cls_config, cls_model = (LlamaConfig, LlamaForCausalLM) if spec.arch == "llama" else (Qwen3Config, Qwen3ForCausalLM)
    config = cls_config(
        **_sizes(spec, _DECODER_SIZES),
        head_dim=spec.hidden_size // spec.num_heads,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        **common,
    )
    return cls_model(config)


def tiny_key(spec: TinySpec, seed: int) -> str:
    sample = hashlib.sha256((resources.files("dialsum.data") / "sample" / "train.csv").read_bytes()).hexdigest()
    payload = json.dumps({"spec": spec.model_dump(), "seed": seed, "sample": sample}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def build_tiny(name: str, spec: TinySpec, seed: int = 0) -> Path:
    """Build (or reuse from the cache) a tiny checkpoint folder for `spec`; returns its path."""
    target = get_settings().cache_dir / "tiny" / f"{name}-{tiny_key(spec, seed)}"
    if (target / "config.json").is_file():
        return target
    torch.manual_seed(seed)
    tok = _train_tokenizer(spec)
    model = _build_model(spec, tok)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target
