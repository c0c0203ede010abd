"""Memory estimates that pick between fast and frugal paths: gradient checkpointing and merged prediction.

Activation estimate (bytes kept for backward, per token and decoder layer, without checkpointing), for a
Llama/Qwen-style block of width h, query width q = heads x head_dim, key/value width kv, MLP width i and
activations of `a` bytes (2 under bf16 autocast, 4 in fp32):

    a * (4h + 3q + 3kv + 4i)      norms' inputs, q/k/v (and their rotated copies), attention output, o_proj
                                   output, gate, up, act(gate) and the gated product
  + 4 * (5h + q + i)               LoRA: each adapted projection keeps its (dropout) input in fp32 — q, k, v, gate
                                   and up read h-wide inputs, o_proj reads q, down_proj reads i

Flash/SDPA attention keeps no seq x seq matrix, so the estimate is linear in tokens. Qwen3-4B gives about 8.5 MB
per token (bf16), i.e. ~35 GB for a 4,096-token micro-batch: that fits an 80 GB card, 16k tokens do not.
Checkpointing is switched on when activations + gradients and AdamW state of the trainable weights would exceed
HEADROOM of the memory still available on the device once the model is loaded.
"""

from __future__ import annotations

import os

import torch

HEADROOM = 0.8


def _dims(config) -> tuple[int, int, int, int, int]:
    """(hidden, query width, key/value width, MLP width, layers) of a decoder (or encoder-decoder) config."""
    h = getattr(config, "hidden_size", None) or config.d_model
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "decoder_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    i = getattr(config, "intermediate_size", None) or getattr(config, "decoder_ffn_dim", 4 * h)
    layers = getattr(config, "num_hidden_layers", None) or (
        getattr(config, "encoder_layers", 0) + getattr(config, "decoder_layers", 0)
    )
    return h, heads * head_dim, kv_heads * head_dim, i, layers


def activation_bytes_per_token(config, act_bytes: int = 2) -> int:
    """Bytes of saved activations per token for a whole forward pass without checkpointing (see module doc)."""
    h, q, kv, i, layers = _dims(config)
    return layers * (act_bytes * (4 * h + 3 * q + 3 * kv + 4 * i) + 4 * (5 * h + q + i))


def training_state_bytes(model) -> int:
    """Gradients and AdamW moments (fp32) of the trainable parameters: allocated only once training starts."""
    return 12 * sum(p.numel() for p in model.parameters() if p.requires_grad)


def available_bytes(device: torch.device) -> int:
    """Free memory on `device`: the CUDA allocator's free + own cached memory, or the host's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:  # pragma: no cover - peft depends on psutil
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def checkpointing_needed(model, tokens_per_batch: int, device: torch.device, act_bytes: int = 2) -> bool:
    """True when one micro-batch's activations plus the training state would not fit beside the loaded model."""
    need = activation_bytes_per_token(model.config, act_bytes) * tokens_per_batch + training_state_bytes(model)
    return need > HEADROOM * available_bytes(device)


def dense_fits(n_params: int, dtype: torch.dtype, device: torch.device, extra: int = 0) -> bool:
    """True when `n_params` more weights of `dtype` (plus `extra` bytes) fit in HEADROOM of free memory."""
    return n_params * torch.tensor([], dtype=dtype).element_size() + extra <= HEADROOM * available_bytes(device)
