"""A one-layer causal LM whose weights always write one fixed Korean summary, for a real OpenAI-compatible server
(`transformers serve`) in tests: a random tiny model only writes a newline.

Attention and MLP outputs are zeroed (o_proj, down_proj), so the last position's hidden state is its token's
embedding. Every token outside the summary embeds to direction 0; the summary's i-th token embeds to direction
i + 1; the output layer maps direction 0 to the summary's first token, direction i + 1 to token i + 1, and the
last one to the end token. Whatever the prompt, greedy or sampled decoding writes the summary, then stops.
"""

from __future__ import annotations

from pathlib import Path

SUMMARY = "#Person1#과 #Person2#가 대화를 나눕니다."


def build(folder: Path, tiny_source: str) -> Path:
    """Save the model, with the tiny Qwen3 tokenizer and chat template of `tiny_source`, to `folder`."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_source)
    chain = tok(SUMMARY, add_special_tokens=False)["input_ids"]
    if len(set(chain)) != len(chain):
        raise ValueError(f"the summary repeats a token: {chain}")
    hidden = 32
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        embed = torch.zeros_like(model.model.embed_tokens.weight)
        embed[:, 0] = 1.0
        head = torch.zeros_like(model.lm_head.weight)
        head[chain[0], 0] = 20.0
        for i, token in enumerate(chain):
            embed[token] = 0.0
            embed[token, i + 1] = 1.0
            following = chain[i + 1] if i + 1 < len(chain) else tok.eos_token_id
            head[following, i + 1] = 20.0
        model.model.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(head)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)
