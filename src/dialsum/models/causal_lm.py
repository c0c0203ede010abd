"""Decoder-only chat LMs (Llama, Qwen3): QLoRA or LoRA fine-tuning on the model's own chat template.

The prompt is rendered with the tokenizer's chat template; the loss covers only the summary and the end-of-turn
token. Generation left-pads batches, strips the prompt and stops at end-of-turn or eos.
"""

from __future__ import annotations

import os
import re
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
from dialsum.models import decoding
from dialsum.models.common import (
    add_placeholder_tokens, batched_generate, fit_embeddings, pad_batch, report_cut, seed_everything,
    token_loss_sum,
)
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


_STRFTIME_RE = re.compile(r"strftime_now\(\s*(?:\"([^\"]*)\"|'([^']*)')\s*\)")


def pin_template_clock(template: str, day) -> str:
    """The template with `strftime_now` answering for the fixed date `day`, so prompts never follow the clock.

    A macro defined in the template shadows transformers' global of the same name; each format the template
    uses is resolved here. A template that computes its format at render time is refused.
    """
    if "strftime_now" not in template:
        return template
    formats = {a or b for a, b in _STRFTIME_RE.findall(template)}
    if template.count("strftime_now") - template.count("strftime_now is defined") != len(_STRFTIME_RE.findall(template)):
        raise ConfigError("the chat template calls strftime_now with a computed format; set chat_template to a fixed one")
    table = ", ".join(f"{f!r}: {day.strftime(f)!r}" for f in sorted(formats))
    return "{%- macro strftime_now(format) -%}{{ {" + table + "}[format] }}{%- endmacro -%}" + template


def load_tokenizer(cfg: CausalLMConfig, source: str, placeholders: Sequence[str], adapter: Path | None = None):
    """The tokenizer with its (date-pinned) chat template and placeholder tokens; returns (tok, {new id: pieces})."""
    source = str(adapter) if adapter else cfg.tokenizer or source
    tok = AutoTokenizer.from_pretrained(source, revision=None if adapter else cfg.revision,
                                        token=get_settings().hub_token(), trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template:
        tok.chat_template = Path(cfg.chat_template).read_text(encoding="utf-8")
    if tok.chat_template is None:
        raise ConfigError(f"{cfg.name}: tokenizer {source} has no chat template; set chat_template in the YAML")
    tok.chat_template = pin_template_clock(tok.chat_template, cfg.template_date)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, add_placeholder_tokens(tok, placeholders)


def load(cfg: CausalLMConfig, source: str, placeholders: Sequence[str], adapter: Path | None = None):
    """Load (optionally 4-bit) base weights, add placeholder tokens, then attach new or saved adapters."""
    seed_everything(cfg.training.seed)
    token = get_settings().hub_token()
    if adapter is not None and cfg.lora is None:
        source = str(adapter)  # a fully fine-tuned model was saved whole
    tok, pieces = load_tokenizer(cfg, source, placeholders, adapter)
    qconf = quantization_config(cfg)
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        source, revision=cfg.revision, token=token, trust_remote_code=cfg.trust_remote_code,
        quantization_config=qconf, dtype=_DTYPES[cfg.quantization.compute_dtype] if qconf else torch.float32,
        device_map={"": _local_device()} if (qconf and cuda) else None,
    )
    fit_embeddings(model, tok, pieces)
    model.generation_config = generation_config(cfg, model, tok)
    if qconf is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if adapter is not None and cfg.lora is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=False), tok
    lconf = lora_config(cfg, sorted(pieces))
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


def render_prompt(cfg: CausalLMConfig, tok, dialogue: str) -> str:
    """The chat-template prompt text for one dialogue (generation prompt included)."""
    messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    messages.append({"role": "user", "content": f"{cfg.instruction}\n\n{dialogue}"})
    kwargs = {"date_string": cfg.template_date.strftime("%d %b %Y"), **cfg.chat_template_kwargs}
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


@lru_cache(maxsize=8)
def _prompt_parts(tok, cfg_json: str) -> tuple[list[int], list[int]]:
    cfg = CausalLMConfig.model_validate_json(cfg_json)
    prefix, suffix = render_prompt(cfg, tok, _MARKER).split(_MARKER)
    return tok(prefix, add_special_tokens=False)["input_ids"], tok(suffix, add_special_tokens=False)["input_ids"]


def prompt_parts(cfg: CausalLMConfig, tok) -> tuple[list[int], list[int]]:
    """Token ids of the prompt before and after the dialogue."""
    return _prompt_parts(tok, cfg.model_dump_json())


def stop_ids(cfg: CausalLMConfig, tok, model=None) -> list[int]:
    """End-of-turn ids: the YAML's stop tokens first (the first ends training targets), then the tokenizer's eos
    and every end token the checkpoint declares (config and generation config)."""
    ours = [tok.convert_tokens_to_ids(t) for t in cfg.stop_tokens]
    return decoding.end_token_ids(tok, *(decoding.model_configs(model) if model is not None else ()), extra=ours)


def input_overhead(cfg: CausalLMConfig, tok) -> int:
    """Prompt tokens around the dialogue (chat template, system prompt, instruction)."""
    prefix, suffix = prompt_parts(cfg, tok)
    return len(prefix) + len(suffix)


def input_limit(cfg: CausalLMConfig) -> tuple[str, int]:
    return "max_prompt_length", cfg.max_prompt_length


def target_ids(cfg: CausalLMConfig, tok, summaries: Sequence[str]) -> list[list[int]]:
    """The full token sequence the model must generate for each summary: its pieces, then end-of-turn (never cut)."""
    end = stop_ids(cfg, tok)[0]
    return [ids + [end] for ids in tok(list(summaries), add_special_tokens=False)["input_ids"]]


def build_features(cfg: CausalLMConfig, tok, examples: Sequence[Example], with_labels: bool) -> list[dict]:
    """Chat-template prompt (dialogue truncated to fit `max_prompt_length`) plus, for training, summary + end-of-turn.

    Labels mask the prompt with -100, so the loss covers the summary and the end-of-turn token only.
    """
    prefix, suffix = prompt_parts(cfg, tok)
    room = cfg.max_prompt_length - len(prefix) - len(suffix)
    if room < 16:
        raise ConfigError(f"{cfg.name}: max_prompt_length {cfg.max_prompt_length} leaves no room for the dialogue")
    dialogues = tok([ex.dialogue for ex in examples], add_special_tokens=False)["input_ids"]
    report_cut(cfg.name, "prompts", [len(d) + len(prefix) + len(suffix) for d in dialogues], cfg.max_prompt_length,
               "max_prompt_length")
    features = [{"input_ids": prefix + ids[:room] + suffix} for ids in dialogues]
    if with_labels:
        targets = target_ids(cfg, tok, [ex.summary or "" for ex in examples])
        report_cut(cfg.name, "summaries", [len(t) for t in targets], cfg.max_target_length, "max_target_length")
        for feat, target in zip(features, targets):
            if len(target) > cfg.max_target_length:
                target = target[: cfg.max_target_length - 1] + target[-1:]
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
    g = cfg.generation
    gen = generation_config(cfg, model, tok)
    exempt = no_repeat_exempt_ids(cfg, tok) if g.no_repeat_ngram_size else []

    def run(batch: list[dict]) -> list[str]:
        inputs = {k: v.to(device) for k, v in collate(tok, batch, for_generation=True).items()}
        start = inputs["input_ids"].shape[1]
        processors = decoding.logits_processors(g.no_repeat_ngram_size, exempt, len(tok), start=start)
        out = model.generate(**inputs, generation_config=gen, logits_processor=processors)
        return decoding.decode(tok, out[:, start:])

    return batched_generate([{"input_ids": f["input_ids"]} for f in features], g.batch_size, run, progress)


def generation_config(cfg: CausalLMConfig, model, tok):
    """The transformers GenerationConfig that `generate` runs with; every setting that matters is explicit."""
    g, stops = cfg.generation, stop_ids(cfg, tok, model)
    return decoding.resolve_generation_config(model, dict(
        max_new_tokens=g.max_new_tokens, num_beams=g.num_beams, repetition_penalty=g.repetition_penalty,
        length_penalty=g.length_penalty, early_stopping=g.early_stopping,
        forced_eos_token_id=stops[0] if g.forced_eos else None, eos_token_id=stops, pad_token_id=tok.pad_token_id,
    ))


def no_repeat_exempt_ids(cfg: CausalLMConfig, tok) -> list[int]:
    return decoding.exempt_ids(tok, decoding.placeholder_ids(tok))


def save(model, tok, out_dir: Path) -> None:
    """Adapters only for (Q)LoRA, the full model otherwise; the tokenizer (with its template) beside it."""
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
