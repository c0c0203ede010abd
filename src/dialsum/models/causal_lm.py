"""Decoder-only chat LMs (Llama, Qwen3): QLoRA or LoRA fine-tuning on the model's own chat template.

The prompt is rendered with the tokenizer's chat template; the loss covers only the summary and the end-of-turn
token. Generation left-pads batches, strips the prompt and stops at end-of-turn or eos.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from dialsum.config import CausalLMConfig
from dialsum.data import Example
from dialsum.errors import ConfigError
from dialsum.models.common import add_placeholder_tokens, batched_generate, pad_batch, token_loss_sum
from dialsum.settings import get_settings

_MARKER = "\u241fDIALOGUE\u241f"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def quantization_config(cfg: CausalLMConfig) -> BitsAndBytesConfig | None:
    """The YAML's `quantization` section as a transformers BitsAndBytesConfig."""
    q = cfg.quantization
    if q is None or not q.load_in_4bit:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=_DTYPES[q.compute_dtype], bnb_4bit_quant_storage=torch.uint8,
    )


def lora_config(cfg: CausalLMConfig, new_token_ids: Sequence[int] = ()) -> PeftLoraConfig | None:
    """The YAML's `lora` section as a PEFT LoraConfig; newly added tokens get trainable embedding rows."""
    if cfg.lora is None:
        return None
    return PeftLoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules), bias="none", task_type="CAUSAL_LM",
        trainable_token_indices=list(new_token_ids) or None,
    )


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
        quantization_config=qconf, dtype=_DTYPES[cfg.quantization.compute_dtype] if qconf else torch.float32,
        device_map={"": _local_device()} if (qconf and cuda) else None,
    )
    if model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok))
    if qconf is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if adapter is not None and cfg.lora is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=False), tok
    lconf = lora_config(cfg, range(before, len(tok)) if before < len(tok) else ())
    if lconf is not None:
        model = get_peft_model(model, lconf)
    _trainable_to_fp32(model)
    return model, tok


def _local_device() -> int:
    """This process's GPU: the launcher's LOCAL_RANK under data-parallel training, else the current device."""
    rank = os.environ.get("LOCAL_RANK")
    return int(rank) if rank is not None else torch.cuda.current_device()


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


def loss(model, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy summed over the summary (and end-of-turn) tokens of the batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return token_loss_sum(logits[:, :-1], batch["labels"][:, 1:])


@torch.inference_mode()
def generate(cfg: CausalLMConfig, model, tok, features: Sequence[dict], progress=None) -> list[str]:
    """Greedy/beam summaries for prompt-only `features`, in order; the prompt is stripped from the output."""
    model.eval()
    device = next(model.parameters()).device
    g, eos = cfg.generation, stop_ids(cfg, tok)

    def run(batch: list[dict]) -> list[str]:
        inputs = {k: v.to(device) for k, v in collate(tok, batch, for_generation=True).items()}
        out = model.generate(
            **inputs, max_new_tokens=g.max_new_tokens, num_beams=g.num_beams, do_sample=False,
            no_repeat_ngram_size=g.no_repeat_ngram_size, repetition_penalty=g.repetition_penalty,
            eos_token_id=eos, pad_token_id=tok.pad_token_id,
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]

    return batched_generate([{"input_ids": f["input_ids"]} for f in features], g.batch_size, run, progress)


def save(model, tok, out_dir: Path) -> None:
    """Adapters only for (Q)LoRA, the full model otherwise; the tokenizer (with its template) beside it."""
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
