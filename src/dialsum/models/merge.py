"""A dense inference copy of an adapted causal LM: LoRA and new-token rows folded into plain dense weights.

Decoding is memory-bound: every step reads all weights. A 4-bit base dequantizes every weight on every step and
the LoRA path adds two small matmuls per projection, so a dense bf16 copy with everything merged decodes much
faster (on CPU, fp32). The copy is built on the meta device, materialised on the target device and filled by
name from the source model, which is left untouched (it is still saved as an adapter afterwards).
"""

from __future__ import annotations

import copy
import logging

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.integrations import dequantize_module_weight
from transformers import AutoModelForCausalLM

from dialsum.models.memory import dense_fits
from dialsum.models.new_tokens import DeltaEmbedding, DeltaHead, merged_weight

log = logging.getLogger(__name__)


def _dense_weight(module: torch.nn.Module) -> torch.Tensor:
    """A module's weight as a dense tensor, with every active LoRA delta and new-token delta added."""
    if isinstance(module, (DeltaEmbedding, DeltaHead)):
        return merged_weight(module)
    if isinstance(module, LoraLayer):
        weight = dequantize_module_weight(module.get_base_layer()).detach().float()
        for name in module.active_adapters:
            if name in module.lora_A and name not in module.merged_adapters:
                weight = weight + module.get_delta_weight(name).float()
        return weight
    return dequantize_module_weight(module).detach()


def _source_tensor(source: torch.nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    module = source.get_submodule(owner)
    if leaf == "weight":
        return _dense_weight(module)
    if isinstance(module, LoraLayer):
        module = module.get_base_layer()
    return getattr(module, leaf).detach()


def _empty_copy(source, dtype: torch.dtype):
    config = copy.deepcopy(source.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


@torch.no_grad()
def dense_copy(model, dtype: torch.dtype, device: torch.device):
    """A merged dense copy of the PEFT `model` in `dtype` on `device`, or None when it would not fit in memory."""
    source = model.get_base_model() if isinstance(model, PeftModel) else model
    dense = _empty_copy(source, dtype)
    n_params = sum(p.numel() for p in dense.parameters())
    if not dense_fits(n_params, dtype, device):
        log.info("dense %s copy (%.1fB params) does not fit on %s: generating unmerged", dtype, n_params / 1e9, device)
        return None
    dense.to_empty(device=device)
    for name, tensor in list(dense.named_parameters()) + list(dense.named_buffers()):
        tensor.copy_(_source_tensor(source, name).to(device))
    dense.tie_weights()
    dense.generation_config = copy.deepcopy(source.generation_config)
    return dense.eval()
