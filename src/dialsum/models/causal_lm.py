"""Decoder-only chat LMs (Llama, Qwen3): QLoRA or LoRA fine-tuning on the model's own chat template.

The prompt is rendered with the tokenizer's chat template; the loss covers only the summary and the end-of-turn
token, and the output layer runs only at those positions. Frozen weights stay in the compute dtype (bf16), only
trainable ones are fp32; new placeholder tokens train small delta rows (models/new_tokens.py). Generation
left-pads batches, strips the prompt and stops at end-of-turn or eos, on a dense merged copy when memory allows.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from dialsum.config import CausalLMConfig
from dialsum.data import Example
from dialsum.errors import ConfigError
from dialsum.models import new_tokens
from dialsum.models.common import add_placeholder_tokens, batched_generate, pad_batch
from dialsum.settings import get_settings

log = logging.getLogger(__name__)

_MARKER = "\u241fDIALOGUE\u241f"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
VOCAB_MULTIPLE = 64  # embedding rows padded to a multiple of 64: tensor-core friendly output-layer matmuls


def quantization_config(cfg: CausalLMConfig) -> BitsAndBytesConfig | None:
    """The YAML's `quantization` section as a transformers BitsAndBytesConfig."""
    q = cfg.quantization
    if q is None or not q.load_in_4bit:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=_DTYPES[q.compute_dtype], bnb_4bit_quant_storage=torch.uint8,
    )


def lora_config(cfg: CausalLMConfig) -> PeftLoraConfig | None:
    """The YAML's `lora` section as a PEFT LoraConfig (new tokens' rows are trained by models/new_tokens.py)."""
    if cfg.lora is None:
        return None
    return PeftLoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules), bias="none", task_type="CAUSAL_LM",
    )


def base_dtype(cfg: CausalLMConfig) -> torch.dtype:
    """Frozen weights' dtype: the 4-bit compute dtype, half precision for a plain LoRA base, fp32 when all train."""
    if cfg.quantization is not None and cfg.quantization.load_in_4bit:
        return _DTYPES[cfg.quantization.compute_dtype]
    if cfg.lora is None or cfg.training.precision == "fp32":
        return torch.float32
    return torch.float16 if cfg.training.precision == "fp16" else torch.bfloat16


def _load_tokenizer(cfg: CausalLMConfig, source: str, token: str | None):
    tok = AutoTokenizer.from_pretrained(source, revision=cfg.revision, token=token, trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template:
        tok.chat_template = Path(cfg.chat_template).read_text(encoding="utf-8")
    if tok.chat_template is None:
        raise ConfigError(f"{cfg.name}: tokenizer {source} has no chat template; set chat_template in the YAML")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(cfg: CausalLMConfig, source: str, placeholders: Sequence[str], adapter: Path | None = None):
    """Load (optionally 4-bit) base weights, add placeholder tokens, then attach new or saved adapters."""
    token = get_settings().hub_token()
    if adapter is not None and cfg.lora is None:
        source = str(adapter)  # a fully fine-tuned model was saved whole
    tok = _load_tokenizer(cfg, str(adapter) if adapter else cfg.tokenizer or source, token)
    before = len(tok)
    add_placeholder_tokens(tok, placeholders)
    qconf = quantization_config(cfg)
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        source, revision=cfg.revision, token=token, trust_remote_code=cfg.trust_remote_code,
        quantization_config=qconf, dtype=base_dtype(cfg),
        device_map={"": torch.cuda.current_device()} if (qconf and cuda) else None,
    )
    _pad_vocabulary(model, len(tok))
    if adapter is not None and cfg.lora is not None:
        new_tokens.load_rows(model, adapter)
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=False), tok
    lconf = lora_config(cfg)
    if lconf is not None:
        model = get_peft_model(model, lconf)  # freezes every base weight; nothing is upcast
        new_tokens.attach(model.get_base_model(), before, len(tok) - before)
    _trainable_to_fp32(model)
    return model, tok


def _pad_vocabulary(model, n_tokens: int) -> None:
    """Room for every token, rows padded to VOCAB_MULTIPLE (padding ids are never generated)."""
    rows = model.get_input_embeddings().num_embeddings
    if rows < n_tokens or rows % VOCAB_MULTIPLE:
        model.resize_token_embeddings(max(rows, n_tokens), pad_to_multiple_of=VOCAB_MULTIPLE)


def _trainable_to_fp32(model) -> None:
    """Trainable weights in fp32 keep AdamW and any GradScaler away from half-precision gradients."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


@lru_cache(maxsize=8)
def _prompt_parts(tok, system_prompt: str | None, instruction: str, kwargs: tuple) -> tuple[list[int], list[int]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": f"{instruction}\n\n{_MARKER}"})
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **dict(kwargs))
    prefix, suffix = text.split(_MARKER)
    return tok(prefix, add_special_tokens=False)["input_ids"], tok(suffix, add_special_tokens=False)["input_ids"]


def stop_ids(cfg: CausalLMConfig, tok) -> list[int]:
    """End-of-turn ids: the YAML's stop tokens first, then the tokenizer's eos."""
    ids = [tok.convert_tokens_to_ids(t) for t in cfg.stop_tokens] + [tok.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None and i != tok.unk_token_id))


def build_features(cfg: CausalLMConfig, tok, examples: Sequence[Example], with_labels: bool) -> list[dict]:
    """Chat-template prompt (dialogue truncated to fit `max_prompt_length`) plus, for training, summary + end-of-turn.

    Labels mask the prompt with -100, so the loss covers the summary and the end-of-turn token only.
    """
    kwargs = tuple(sorted(cfg.chat_template_kwargs.items()))
    prefix, suffix = _prompt_parts(tok, cfg.system_prompt, cfg.instruction, kwargs)
    room = cfg.max_prompt_length - len(prefix) - len(suffix)
    if room < 16:
        raise ConfigError(f"{cfg.name}: max_prompt_length {cfg.max_prompt_length} leaves no room for the dialogue")
    dialogues = tok([ex.dialogue for ex in examples], add_special_tokens=False)["input_ids"]
    features = [{"input_ids": prefix + ids[:room] + suffix} for ids in dialogues]
    if with_labels:
        end = stop_ids(cfg, tok)[0]
        summaries = tok([ex.summary or "" for ex in examples], add_special_tokens=False)["input_ids"]
        for feat, ids in zip(features, summaries):
            target = ids + [end]
            feat["labels"] = [-100] * len(feat["input_ids"]) + target
            feat["input_ids"] = feat["input_ids"] + target
    return features


def collate(tok, features: Sequence[dict], for_generation: bool = False, multiple_of: int = 1) -> dict:
    side = "left" if for_generation else "right"
    return pad_batch(features, tok.pad_token_id, side=side, multiple_of=multiple_of, aligned_labels=True)


def target_count(batch: dict) -> int:
    """Label tokens the loss covers: position t predicts label t+1, so the first column never counts."""
    return int((batch["labels"][:, 1:] != -100).sum())


def _decoder_and_head(model):
    """The transformer body (to final hidden states) and the output layer of a plain or PEFT-wrapped causal LM."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def loss(model, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy summed over the summary (and end-of-turn) tokens of the batch.

    The body runs to its final hidden states; the output layer and the (fp32) cross-entropy run only at the
    positions that carry a label, about 13% of a batch, so no (batch x length x vocabulary) logits exist.
    """
    decoder, head = _decoder_and_head(model)
    labels = batch["labels"][:, 1:]
    rows, cols = (labels != -100).nonzero(as_tuple=True)  # before the forward: the only wait on the device is here
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = head(hidden.last_hidden_state[rows, cols])
    return torch.nn.functional.cross_entropy(logits.float(), labels[rows, cols], reduction="sum")


def inference_model(cfg: CausalLMConfig, model):
    """The model to generate with: for an adapted model (LoRA, new-token rows), a dense merged copy in the
    compute dtype (fp32 on CPU) when `generation.merge_adapter` is on and it fits in memory, else `model`."""
    if not cfg.generation.merge_adapter or not isinstance(model, PeftModel):
        return model
    from dialsum.models.merge import dense_copy

    device = next(model.parameters()).device
    dtype = base_dtype(cfg) if device.type == "cuda" else torch.float32
    if dtype is torch.float32 and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dense_copy(model, dtype, device) or model


def _autocast(model, device: torch.device):
    """bf16 (or fp16) autocast on GPU when any weight is fp32 (LoRA, fp32 base); plain on CPU."""
    if device.type != "cuda" or all(p.dtype != torch.float32 for p in model.parameters()):
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


@torch.inference_mode()
def generate(cfg: CausalLMConfig, model, tok, features: Sequence[dict], progress=None) -> list[str]:
    """Greedy/beam summaries for prompt-only `features`, in order; the prompt is stripped from the output.

    Batches hold at most `generation.batch_size` rows and `generation.max_tokens_per_batch` prompt + new tokens.
    Embedding rows past the tokenizer (vocabulary padding) are never generated. `static_cache` decodes with a
    static KV cache (compiled on GPU); prompts are then padded to a multiple of 64 to bound recompilation.
    """
    model.eval()
    device = next(model.parameters()).device
    g, eos = cfg.generation, stop_ids(cfg, tok)
    rows = model.get_input_embeddings().num_embeddings
    extra = {"suppress_tokens": list(range(len(tok), rows))} if rows > len(tok) else {}
    if g.static_cache:
        extra["cache_implementation"] = "static"

    def run(batch: list[dict]) -> list[str]:
        multiple = 64 if g.static_cache else 1
        inputs = {k: v.to(device) for k, v in collate(tok, batch, for_generation=True, multiple_of=multiple).items()}
        with _autocast(model, device):
            out = model.generate(
                **inputs, max_new_tokens=g.max_new_tokens, num_beams=g.num_beams, do_sample=False,
                no_repeat_ngram_size=g.no_repeat_ngram_size, repetition_penalty=g.repetition_penalty,
                eos_token_id=eos, pad_token_id=tok.pad_token_id, **extra,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]

    return batched_generate([{"input_ids": f["input_ids"]} for f in features], g.batch_size, run, progress,
                            max_tokens=g.max_tokens_per_batch, new_tokens=g.max_new_tokens)


def save(model, tok, out_dir: Path) -> None:
    """Adapters only for (Q)LoRA (plus the new tokens' rows), the full model otherwise; the tokenizer beside it."""
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir, save_embedding_layers=False)
        new_tokens.save_rows(model.get_base_model(), out_dir)
    else:
        model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
