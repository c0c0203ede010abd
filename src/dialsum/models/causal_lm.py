"""Decoder-only chat LMs (Llama, Qwen3): QLoRA or LoRA fine-tuning on the model's own chat template.

The prompt is rendered with the tokenizer's chat template; the loss covers only the summary and the end-of-turn
token, and the output layer runs only at those positions. Frozen weights stay in the compute dtype (bf16), only
trainable ones are fp32; new placeholder tokens train small delta rows (models/new_tokens.py). Generation
left-pads batches, strips the prompt and stops at end-of-turn or any end token the checkpoint declares, on a
dense merged copy when memory allows.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from dialsum.config import CausalLMConfig
from dialsum.data import Example
from dialsum.errors import ConfigError
from dialsum.models import decoding, new_tokens, trained
from dialsum.models.chat_template import pin_template_clock, unpin_template_clock
from dialsum.models.common import (
    add_placeholder_tokens,
    budgeted_generate,
    cut_targets,
    init_new_rows,
    pad_batch,
    report_cut,
    seed_everything,
)
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
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=_DTYPES[q.compute_dtype],
        bnb_4bit_quant_storage=torch.uint8,
    )


def lora_config(cfg: CausalLMConfig) -> PeftLoraConfig | None:
    """The YAML's `lora` section as a PEFT LoraConfig (new tokens' rows are trained by models/new_tokens.py)."""
    if cfg.lora is None:
        return None
    return PeftLoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def base_dtype(cfg: CausalLMConfig) -> torch.dtype:
    """Frozen weights' dtype: the 4-bit compute dtype, half precision for a plain LoRA base, fp32 when all train."""
    if cfg.quantization is not None and cfg.quantization.load_in_4bit:
        return _DTYPES[cfg.quantization.compute_dtype]
    if cfg.lora is None or cfg.training.precision == "fp32":
        return torch.float32
    return torch.float16 if cfg.training.precision == "fp16" else torch.bfloat16


def load_tokenizer(cfg: CausalLMConfig, source: str, placeholders: Sequence[str], adapter: Path | None = None):
    """The tokenizer with its (date-pinned) chat template and placeholder tokens; returns (tok, {new id: pieces})."""
    source = str(adapter) if adapter else cfg.tokenizer or source
    tok = AutoTokenizer.from_pretrained(
        source,
        revision=None if adapter else cfg.revision,
        token=get_settings().hub_token(),
        trust_remote_code=cfg.trust_remote_code,
    )
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
        source,
        revision=cfg.revision,
        token=token,
        trust_remote_code=cfg.trust_remote_code,
        quantization_config=qconf,
        dtype=base_dtype(cfg),
        device_map={"": _local_device()} if (qconf and cuda) else None,
    )
    _keep_4bit_layout(model)
    _pad_vocabulary(model, len(tok))
    init_new_rows(model, pieces)
    model.generation_config = generation_config(cfg, model, tok)
    if adapter is not None and cfg.lora is not None:
        new_tokens.load_rows(model, adapter)
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=False), tok
    lconf = lora_config(cfg)
    if lconf is not None:
        model = get_peft_model(model, lconf)  # freezes every base weight; nothing is upcast
        if pieces:  # added ids are contiguous, after the tokenizer's own
            new_tokens.attach(model.get_base_model(), min(pieces), len(pieces))
    _trainable_to_fp32(model)
    return model, tok


def _keep_4bit_layout(model) -> None:
    """Keep 4-bit weights in bitsandbytes' canonical layout on every device.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight in place at its first no-grad forward in eval mode
    (evaluation, generation) into a CPU-only layout with a bf16 kernel. Code that reads the weight afterwards, such
    as PEFT's dequantization for the merged prediction copy, does not know that layout, and training after an
    evaluation would run on it too; so the repacking is turned off and training, evaluation and merging see the
    same weights. GPUs never repack.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _pad_vocabulary(model, n_tokens: int) -> None:
    """Room for every token, rows padded to VOCAB_MULTIPLE (padding ids are never generated)."""
    rows = model.get_input_embeddings().num_embeddings
    if rows < n_tokens or rows % VOCAB_MULTIPLE:
        model.resize_token_embeddings(max(rows, n_tokens), pad_to_multiple_of=VOCAB_MULTIPLE, mean_resizing=False)


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
    report_cut(
        cfg.name,
        "prompts",
        [len(d) + len(prefix) + len(suffix) for d in dialogues],
        cfg.max_prompt_length,
        "max_prompt_length",
    )
    features = [{"input_ids": prefix + ids[:room] + suffix} for ids in dialogues]
    if with_labels:
        targets = target_ids(cfg, tok, [ex.summary or "" for ex in examples])
        for feat, target in zip(features, cut_targets(cfg.name, targets, cfg.max_target_length)):
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


def loss(model, batch: dict, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy summed over the summary (and end-of-turn) tokens of the batch (optionally
    label-smoothed).

    The body runs to its final hidden states; the output layer and the (fp32) cross-entropy run only at the
    positions that carry a label, about 13% of a batch, so no (batch x length x vocabulary) logits exist.
    """
    decoder, head = _decoder_and_head(model)
    labels = batch["labels"][:, 1:]
    rows, cols = (labels != -100).nonzero(as_tuple=True)  # before the forward: the only wait on the device is here
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = head(hidden.last_hidden_state[rows, cols])
    return torch.nn.functional.cross_entropy(
        logits.float(), labels[rows, cols], reduction="sum", label_smoothing=label_smoothing
    )


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


def _generation_setup(cfg: CausalLMConfig, model, tok) -> tuple[torch.device, list[int], int, dict, list]:
    """Device, no-repeat exempt ids, embedding rows, generate() extras and the processor that bars the vocabulary
    padding rows, shared by predictions and candidates."""
    model.eval()
    g = cfg.generation
    exempt = no_repeat_exempt_ids(cfg, tok) if g.no_repeat_ngram_size else []
    rows = model.get_input_embeddings().num_embeddings
    padding = [decoding.SuppressFrom(len(tok))] if rows > len(tok) else []
    extra = {"cache_implementation": "static"} if g.static_cache else {}
    return next(model.parameters()).device, exempt, rows, extra, padding


def _inputs(cfg: CausalLMConfig, tok, batch: list[dict], device: torch.device) -> dict:
    multiple = 64 if cfg.generation.static_cache else 1
    return {k: v.to(device) for k, v in collate(tok, batch, for_generation=True, multiple_of=multiple).items()}


def _generate_batches(
    cfg: CausalLMConfig, model, tok, features: Sequence[dict], progress, step: Callable[..., list], copies: int = 1
) -> list:
    """`step(inputs, start, processors, extra)` under autocast on each batch of prompt-only `features`, the results
    in input order: `start` is where the generated tokens begin (the padded prompt length), `processors` the logits
    processors (no-repeat rule, vocabulary padding barred), `extra` the generate() extras.

    Batches hold at most `generation.batch_size` rows and `generation.max_tokens_per_batch` tokens, each row
    counted as its prompt plus `generation.max_new_tokens`, `copies` times over.
    """
    g = cfg.generation
    device, exempt, rows, extra, padding = _generation_setup(cfg, model, tok)

    def run(batch: list[dict]) -> list:
        inputs = _inputs(cfg, tok, batch, device)
        start = inputs["input_ids"].shape[1]
        processors = decoding.logits_processors(g.no_repeat_ngram_size, exempt, rows, start=start) + padding
        with _autocast(model, device):
            return step(inputs, start, processors, extra)

    return budgeted_generate([{"input_ids": f["input_ids"]} for f in features], g, run, progress, copies)


@torch.inference_mode()
def generate(cfg: CausalLMConfig, model, tok, features: Sequence[dict], progress=None) -> list[str]:
    """Greedy/beam summaries for prompt-only `features`, in order; the prompt is stripped from the output.

    Batches hold at most `generation.batch_size` rows and `generation.max_tokens_per_batch` prompt + new tokens.
    Embedding rows past the tokenizer (vocabulary padding) are never generated. `static_cache` decodes with a
    static KV cache (compiled on GPU); prompts are then padded to a multiple of 64 to bound recompilation.
    """
    gen = generation_config(cfg, model, tok)

    def step(inputs: dict, start: int, processors: list, extra: dict) -> list[str]:
        out = model.generate(**inputs, generation_config=gen, logits_processor=processors, **extra)
        return decoding.decode(tok, out[:, start:])

    return _generate_batches(cfg, model, tok, features, progress, step)


@torch.inference_mode()
def generate_candidates(
    cfg: CausalLMConfig, model, tok, features: Sequence[dict], progress=None
) -> tuple[list[str], list[list[dict]]]:
    """The summaries `generate` returns, and `generation.num_candidates` seeded samples per dialogue
    (ε-sampling by default), each {"text", "logprob", "tokens"}; token budgets count every sample."""
    gen, cand = generation_config(cfg, model, tok), candidate_generation_config(cfg, model, tok)
    stops = stop_ids(cfg, tok, model)

    def step(inputs: dict, start: int, processors: list, extra: dict) -> list[tuple[str, list[dict]]]:
        return decoding.draw_candidates(model, tok, inputs, gen, cand, processors, stops, start, **extra)

    with decoding.seeded(cfg.training.seed):
        pairs = _generate_batches(cfg, model, tok, features, progress, step, copies=cfg.generation.num_candidates)
    return [text for text, _ in pairs], [candidates for _, candidates in pairs]


def generate_kwargs(cfg: CausalLMConfig, model, tok) -> dict:
    """The `generate()` settings (`trained.generate_kwargs`): the first stop token is the one forced at the limit."""
    stops = stop_ids(cfg, tok, model)
    return trained.generate_kwargs(cfg.generation, stops, stops[0], tok.pad_token_id)


def save(model, tok, out_dir: Path) -> None:
    """Adapters only for (Q)LoRA (plus the new tokens' rows), the full model otherwise; the tokenizer beside it,
    with the chat template as the checkpoint had it (unpinned)."""
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir, save_embedding_layers=False)
        new_tokens.save_rows(model.get_base_model(), out_dir)
    else:
        model.save_pretrained(out_dir)
    pinned = tok.chat_template
    tok.chat_template = unpin_template_clock(pinned) if pinned else pinned  # loading pins it again
    try:
        tok.save_pretrained(out_dir)
    finally:
        tok.chat_template = pinned


# The shared surface (models.protocols: Summarizer and the generation configs), bound to this family; session is
# the (model, tokenizer) pair.
TRAINABLE = True
summarize, summarize_candidates, generation_settings, generation_config, candidate_generation_config = trained.bind(
    sys.modules[__name__]
)
no_repeat_exempt_ids = trained.no_repeat_exempt_ids
