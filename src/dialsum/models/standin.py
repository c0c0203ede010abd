"""Stand-ins for the real profiles' base checkpoints, built offline: the real architecture class, vocabulary size,
special tokens, tokenizer and chat template, with random weights and far fewer, narrower layers.

They are saved like a hub snapshot (config.json, generation_config.json, weights, tokenizer files), so a real
profile trains, saves, publishes and predicts on one through exactly the code path of the real checkpoint
(`--set model=<folder>`); only the weights and the sizes differ. The tokenizer and template files come from a
reference folder holding the real ones (tokenizer.json, tokenizer_config.json, chat_template.jinja, ...).

Llama-3's tokenizer.json is the exception: when it is not at hand, `llama3_tokenizer` builds a byte-level BPE
with Llama-3's pre-tokenizer rule, its 128,000 regular ids and its 256 special tokens at their ids, trained on
the texts given, to go with the real tokenizer_config.json, special-token map and chat template. Where it differs
from the real one: its merges are learned from those texts (a few thousand real pieces, the rest of the 128,000
regular ids are unused placeholders), so token counts differ from the real tokenizer's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)

# Reduced shapes: one layer, 64 wide. The vocabulary and everything about tokens stay real.
# A shallow random model with tied embeddings echoes its last input token forever; layer weights drawn SPREAD
# times wider than the usual initialisation make it write varied (meaningless) text, like a model that works.
SPREAD = 8.0
SMALL = {
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
}
SMALL_BART = {
    "d_model": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
}

# Llama-3's pre-tokenizer rule (contractions, letters, 1-3 digits, punctuation runs, newlines, spaces).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGULAR = 128000  # regular BPE ids; the 256 special tokens follow
# Public facts of the real checkpoints that a stand-in keeps (config and generation config).
LLAMA3_2_3B = {
    "vocab_size": 128256,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
LLAMA3_GENERATION = {
    "bos_token_id": 128000,
    "do_sample": True,
    "eos_token_id": [128001, 128008, 128009],
    "temperature": 0.6,
    "top_p": 0.9,
}
QWEN3_4B = {
    "vocab_size": 151936,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "tie_word_embeddings": True,
    "max_position_embeddings": 262144,
    "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0},
}
QWEN3_GENERATION = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 0.8,
}


def save_random_lm(
    arch: str, shape: dict, tok, folder: Path, dtype=torch.float32, device="cpu", seed=0, config: dict | None = None
) -> int:
    """Save a random-weight Llama or Qwen3 of `shape` plus `tok` to `folder` like a hub checkpoint; returns N params.
    `config` overrides config fields (token ids, rope, positions); by default they follow `tok`."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    cls_config, cls_model = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[arch]
    fields = {
        "tie_word_embeddings": True,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        **(config or {}),
    }
    model = _random(cls_config(**shape, **fields, dtype=dtype), cls_model, dtype, device, seed)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    return params


def _random(config, cls_model, dtype=torch.float32, device="cpu", seed=0, spread: float = 1.0):
    """A randomly initialised model; `spread` multiplies every weight matrix but the embeddings."""
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls_model(config)
    finally:
        torch.set_default_dtype(default)
    if spread != 1.0:
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim == 2 and id(param) not in embeddings:
                    param.mul_(spread)
    return model


def _write_generation_config(folder: Path, values: dict) -> None:
    (folder / "generation_config.json").write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")


def _copy(reference: Path, folder: Path, names: Iterable[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (reference / name).is_file():
            shutil.copyfile(reference / name, folder / name)


def kobart(reference: Path, folder: Path, shape: dict | None = None, seed: int = 0) -> Path:
    """A BART with the reference config.json (token ids, positions, vocabulary 30,000), reduced to `shape`, with
    dropout off (so a data-parallel run and a one-process run draw no different masks), plus the reference
    tokenizer and generation config."""
    from transformers import BartConfig, BartForConditionalGeneration

    values = json.loads((reference / "config.json").read_text(encoding="utf-8"))
    values.pop("num_hidden_layers", None)  # an alias of encoder_layers: it would undo the reduction
    values.update(shape or SMALL_BART, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    config = BartConfig.from_dict(values)
    _random(config, BartForConditionalGeneration, seed=seed, spread=SPREAD).save_pretrained(folder)
    _copy(
        reference,
        folder,
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"],
    )
    return folder


def qwen3(reference: Path, folder: Path, shape: dict | None = None, seed: int = 0) -> Path:
    """A Qwen3 with the public Qwen3-4B vocabulary (151,936 rows), token ids and rope, reduced to `shape`, plus the
    reference tokenizer files and chat template verbatim and the public generation config."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**(shape or SMALL), **QWEN3_4B)
    _random(config, Qwen3ForCausalLM, seed=seed, spread=SPREAD).save_pretrained(folder)
    _copy(
        reference,
        folder,
        [
            "vocab.json",
            "merges.txt",
            "tokenizer.json",
            "tokenizer_config.json",
            "added_tokens.json",
            "special_tokens_map.json",
            "chat_template.jinja",
        ],
    )
    _write_generation_config(folder, QWEN3_GENERATION)
    return folder


def llama3(reference: Path, texts: Iterable[str], folder: Path, shape: dict | None = None, seed: int = 0) -> Path:
    """A Llama with the public Llama-3.2-3B vocabulary (128,256 rows), token ids and rope, reduced to `shape`, with
    the stand-in tokenizer (`llama3_tokenizer`) and the reference tokenizer config, special tokens and template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama3_tokenizer(reference, texts, folder)
    config = LlamaConfig(**(shape or SMALL), **LLAMA3_2_3B)
    _random(config, LlamaForCausalLM, seed=seed, spread=SPREAD).save_pretrained(folder)
    _write_generation_config(folder, LLAMA3_GENERATION)
    return folder


def llama3_tokenizer(reference: Path, texts: Iterable[str], folder: Path, learned: int = 16000) -> Path:
    """Write a Llama-3-shaped tokenizer.json to `folder` beside the reference tokenizer_config.json,
    special_tokens_map.json and chat_template.jinja.

    Byte-level BPE behind Llama-3's split rule, with up to `learned` pieces trained on `texts`; the remaining ids
    below 128,000 are unused placeholders, and the 256 special tokens of the reference config keep their ids
    (`<|begin_of_text|>` 128000, `<|eot_id|>` 128009, ...). Encoding adds `<|begin_of_text|>`, like Llama-3's.
    """
    config = json.loads((reference / "tokenizer_config.json").read_text(encoding="utf-8"))
    specials = sorted((int(i), entry) for i, entry in config["added_tokens_decoder"].items())
    bpe = Tokenizer(models.BPE(ignore_merges=True))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        list(texts),
        trainers.BpeTrainer(
            vocab_size=learned, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    state = json.loads(bpe.to_str())
    vocab = state["model"]["vocab"]
    unused = (f"<|unused_regular_{i}|>" for i in range(LLAMA3_REGULAR))
    for token_id in range(len(vocab), LLAMA3_REGULAR):
        vocab[next(unused)] = token_id
    state["added_tokens"] = [
        {
            "id": i,
            "content": e["content"],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, e in specials
    ]
    tok = Tokenizer.from_str(json.dumps(state))
    bos = config["bos_token"]
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
            ),
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    _copy(reference, folder, ["tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"])
    return folder
