"""The typed schema of a model profile: every field declared, described and validated; `type` picks the family.

YAML is only data: unknown keys are rejected (`extra="forbid"`), cross-field rules are validators.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TrainingConfig(Strict):
    epochs: float = Field(3, gt=0, description="Passes over the training split.")
    batch_size: int = Field(16, ge=1, description="Examples per optimizer micro-batch (unless max_tokens_per_batch).")
    max_tokens_per_batch: int | None = Field(
        None, ge=16, description="Padded tokens per micro-batch; replaces batch_size with length-grouped token budgets."
    )
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of each training target's probability spread over the vocabulary (0: off); "
        "the dev loss is always plain cross-entropy.",
    )
    warmup_steps: float = Field(0.05, ge=0, description="Warmup: a fraction of all steps if < 1, else a step count.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw",
        description="adamw (fused where available), or bitsandbytes' 8-bit AdamW (paged: states spill to host memory).",
    )
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning rate after warmup: linear or cosine decay to zero, or constant."
    )
    log_every: int = Field(10, ge=1, description="Optimizer steps between reads of the training loss for logging.")
    max_bad_steps: int = Field(
        5, ge=1, description="Non-finite losses or gradients in a row (each such step is skipped) that stop the run."
    )
    eval_every: int | None = Field(
        None, ge=1, description="Optimizer steps between dev-loss evaluations; None: each epoch end only."
    )
    eval_loss_rows: int | None = Field(None, ge=1, description="Dev rows used for the dev loss; None: all of them.")
    eval_score_rows: int | None = Field(
        200, ge=1, description="Dev rows generated and scored at each epoch end; None: all of them."
    )
    best_metric: Literal["dev_score", "dev_loss"] = Field(
        "dev_score",
        description="What picks the best evaluation (higher score, lower loss) for the shipped model and early "
        "stopping.",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations of best_metric without improvement; None: never."
    )
    load_best_model: bool = Field(
        True, description="End training with the weights of the best evaluation, not the last step."
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Autocast dtype; auto is bf16 on GPUs that support it, else fp32."
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        False, description="Trade compute for activation memory; auto turns it on only when activations would not fit."
    )
    group_by_length: bool = Field(True, description="Length-grouped batches (dynamic padding either way).")
    length_group_batches: int = Field(
        50, ge=1, description="Batches per length-sorted mega-batch; fewer mix content more at some padding cost."
    )
    seed: int = Field(42, description="Seed for sampling and initialisation.")
    debug_rows: int = Field(32, ge=1, description="Rows per split kept by --debug.")
    debug_steps: int = Field(4, ge=1, description="Optimizer steps run by --debug.")
    checkpoint_every: int | None = Field(
        250,
        ge=1,
        description="Optimizer steps between checkpoints (also one at each epoch end); null: epoch ends only.",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept locally and in storage.")


class GenerationConfig(Strict):
    batch_size: int = Field(32, ge=1, description="Dialogues per generate() call (at most).")
    max_tokens_per_batch: int | None = Field(
        None, ge=16, description="Prompt plus new tokens per generate() call; None: batch_size rows."
    )
    merge_adapter: bool = Field(
        True, description="Predict with LoRA (and new token rows) merged into a dense base when memory allows."
    )
    static_cache: bool = Field(False, description="Static KV cache with torch.compile'd decoding (GPU).")
    max_new_tokens: int = Field(100, ge=1, description="Longest summary generated.")
    num_beams: int = Field(1, ge=1, description="Beam width; 1 is greedy.")
    no_repeat_ngram_size: int = Field(
        0,
        ge=0,
        description="Block repeating a generated n-gram of this size (0: off); n-grams holding a placeholder "
        "or a whitespace piece are exempt. `dialsum preflight` shows how many references a value blocks.",
    )
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty for repeated tokens (1.0: off).")
    length_penalty: float = Field(1.0, description="Beam score exponent on length (>1 favours longer summaries).")
    early_stopping: bool = Field(False, description="Beam search stops once num_beams candidates have ended.")
    forced_eos: bool = Field(False, description="Force the end token when max_new_tokens is reached.")
    num_candidates: int = Field(
        1,
        ge=1,
        le=64,
        description="Summaries kept per dialogue for MBR ensembling (predictions/<split>_candidates.jsonl); "
        "1: only the prediction.",
    )
    candidate_method: Literal["beam", "epsilon", "temperature"] | None = Field(
        None,
        description="How candidates are drawn: beam (the n best beams; needs num_beams >= num_candidates), "
        "epsilon (ε-sampling) or temperature (plain sampling), seeded by training.seed; null: the family's default "
        "(beam for encoder_decoder, epsilon for causal_lm).",
    )
    candidate_epsilon: float = Field(
        0.02, gt=0, lt=1, description="ε-sampling: tokens below this probability are never drawn."
    )
    candidate_temperature: float = Field(1.0, gt=0, description="Softmax temperature of sampled candidates.")


class QuantizationConfig(Strict):
    load_in_4bit: bool = Field(True, description="Load base weights in 4-bit with bitsandbytes.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Matmul dtype for 4-bit layers."
    )


class LoraConfig(Strict):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Module names that get adapters.",
    )


class TinySpec(Strict):
    """A small random-weight model and a locally trained tokenizer, built offline."""

    arch: Literal["bart", "llama", "qwen3"] = Field(description="Architecture to instantiate.")
    hidden_size: int = Field(64, ge=8, description="Model width.")
    num_layers: int = Field(2, ge=1, description="Layers (encoder and decoder each for bart).")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (llama, qwen3).")
    intermediate_size: int = Field(128, ge=8, description="Feed-forward width.")
    vocab_size: int = Field(2000, ge=300, description="Tokenizer vocabulary trained on the sample data.")
    max_positions: int = Field(1024, ge=64, description="Longest sequence.")


class ModelConfigBase(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Short model name; defaults to the YAML file stem.")
    model: str = Field(description="Hub id or local path of the pretrained checkpoint (a label for tiny models).")
    revision: str | None = Field(
        None,
        description="Hub revision of `model` (commit, tag or branch); a run resolves it to a commit when it starts "
        "and loads that commit for retries and predictions.",
    )
    tokenizer: str | None = Field(None, description="Tokenizer id or path if it differs from `model`.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the checkpoint. Off unless needed.")
    tiny: TinySpec | None = Field(None, description="Build this model locally with random weights instead of loading.")
    max_target_length: int = Field(
        128,
        ge=8,
        description="Summary tokens kept for training, end token included; longer summaries are cut and reported.",
    )
    quantization: QuantizationConfig | None = Field(None, description="4-bit loading (causal_lm only).")
    lora: LoraConfig | None = Field(None, description="LoRA adapters (causal_lm only).")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation settings.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Decoding settings.")

    @model_validator(mode="after")
    def _precision_matches_compute_dtype(self):
        q = self.quantization
        if q and q.compute_dtype == "bfloat16" and self.training.precision == "fp16":
            raise ValueError(
                "training.precision fp16 with quantization.compute_dtype bfloat16 mixes dtypes; use bf16 or auto"
            )
        return self


def _check_candidates(cfg):
    """Reject candidate settings the family cannot run: a method it does not offer, or fewer beams than candidates."""
    g, method = cfg.generation, cfg.candidate_method
    if method not in cfg.CANDIDATE_METHODS:
        raise ValueError(
            f"generation.candidate_method {method!r} is not available for type {cfg.type}; "
            f"use one of {', '.join(cfg.CANDIDATE_METHODS)}"
        )
    if g.num_candidates > 1 and method == "beam" and g.num_beams < g.num_candidates:
        raise ValueError(
            f"generation.candidate_method beam keeps the num_beams best beams: num_beams {g.num_beams} "
            f"cannot give num_candidates {g.num_candidates}; raise num_beams or sample (epsilon)"
        )
    return cfg


class EncoderDecoderConfig(ModelConfigBase):
    type: Literal["encoder_decoder"] = Field(description="Model family: a seq2seq model such as KoBART.")
    max_source_length: int = Field(
        1024, ge=16, description="Input tokens kept (bos and eos included); longer dialogues are cut and reported."
    )
    CANDIDATE_METHODS: ClassVar[tuple[str, ...]] = ("beam", "epsilon", "temperature")

    @property
    def candidate_method(self) -> str:
        """generation.candidate_method, or this family's default: the beams' n best."""
        return self.generation.candidate_method or "beam"

    @model_validator(mode="after")
    def _candidates_can_be_drawn(self):
        return _check_candidates(self)

    @model_validator(mode="after")
    def _no_adapters(self):
        if self.quantization is not None:
            raise ValueError("quantization (4-bit) is only supported for type causal_lm")
        if self.lora is not None:
            raise ValueError("lora is only supported for type causal_lm")
        if self.tiny and self.tiny.arch != "bart":
            raise ValueError(f"tiny.arch {self.tiny.arch!r} is not an encoder-decoder architecture")
        return self


class CausalLMConfig(ModelConfigBase):
    type: Literal["causal_lm"] = Field(description="Model family: a decoder-only chat LM.")
    max_prompt_length: int = Field(
        1024, ge=32, description="Prompt tokens kept; the dialogue is cut to fit, and cuts are reported."
    )
    system_prompt: str | None = Field(None, description="System message, if the template takes one.")
    instruction: str = Field(description="User instruction placed before the dialogue.")
    chat_template: str | None = Field(
        None, description="Jinja file (relative to the YAML) overriding the tokenizer's template."
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra template variables, e.g. enable_thinking."
    )
    stop_tokens: list[str] = Field(
        default_factory=list,
        description="End-of-turn tokens: the first ends training targets; all stop generation, "
        "as do the checkpoint's own end tokens.",
    )
    template_date: date = Field(
        date(2024, 7, 26),
        description="The date a chat template sees (date_string, strftime_now), "
        "so prompts are the same bytes on every day.",
    )
    CANDIDATE_METHODS: ClassVar[tuple[str, ...]] = ("epsilon", "temperature")

    @property
    def candidate_method(self) -> str:
        """generation.candidate_method, or this family's default: ε-sampling."""
        return self.generation.candidate_method or "epsilon"

    @model_validator(mode="after")
    def _candidates_can_be_drawn(self):
        return _check_candidates(self)

    @model_validator(mode="after")
    def _quantized_needs_lora(self):
        if self.quantization and self.quantization.load_in_4bit and self.lora is None:
            raise ValueError("a 4-bit base cannot be fine-tuned directly; add a lora section")
        if self.tiny and self.tiny.arch == "bart":
            raise ValueError("tiny.arch 'bart' is not a causal LM architecture")
        return self


from dialsum.config.chat_api import ChatAPIConfig  # noqa: E402  (it builds on Strict, above)

ModelConfig = Annotated[EncoderDecoderConfig | CausalLMConfig | ChatAPIConfig, Field(discriminator="type")]
ADAPTER: TypeAdapter = TypeAdapter(ModelConfig)
# The config schema of each family, keyed by `type`: a generate-only family has its own (no training sections).
FAMILIES: dict[str, type[Strict]] = {
    "encoder_decoder": EncoderDecoderConfig,
    "causal_lm": CausalLMConfig,
    "chat_api": ChatAPIConfig,
}
