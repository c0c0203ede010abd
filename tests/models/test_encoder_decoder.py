import json

import pytest
import torch

from dialsum.config import load_model_config
from dialsum.data import Example, load_splits, placeholders_in
from dialsum.errors import ConfigError
from dialsum.models import checkpoint_source, encoder_decoder


@pytest.fixture(scope="module")
def tiny():
    cfg = load_model_config("tiny-bart")
    splits = load_splits(None)
    model, tok = encoder_decoder.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"]))
    return cfg, model, tok, splits


def test_kobart_settings_are_explicit_not_inherited(shared_data):
    """The checkpoint forces id 2 (<usr>) as eos; the resolved config forces the tokenizer's eos instead."""
    from transformers import AutoConfig, BartForConditionalGeneration, GenerationConfig

    ref = shared_data / "reference" / "kobart-tokenizer"
    assert json.loads((ref / "generation_config.json").read_text())["forced_eos_token_id"] == 2
    cfg = load_model_config("kobart").model_copy(update={"tokenizer": str(ref)})
    config = AutoConfig.from_pretrained(ref)
    config.update(
        dict(
            d_model=8,
            encoder_layers=1,
            decoder_layers=1,
            encoder_ffn_dim=8,
            decoder_ffn_dim=8,
            encoder_attention_heads=1,
            decoder_attention_heads=1,
        )
    )
    model = BartForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(ref)
    tok, _ = encoder_decoder.load_tokenizer(cfg, cfg.model, [])
    gen = encoder_decoder.generation_config(cfg, model, tok)
    g = cfg.generation
    assert gen.forced_eos_token_id == tok.eos_token_id == 1
    assert (gen.early_stopping, gen.length_penalty, gen.num_beams) == (g.early_stopping, g.length_penalty, g.num_beams)
    assert 1 in gen.eos_token_id and gen.max_new_tokens == g.max_new_tokens
    assert cfg.max_source_length == 1024 <= config.max_position_embeddings


def test_source_longer_than_the_checkpoint_is_refused():
    cfg = load_model_config("tiny-bart")
    cfg = cfg.model_copy(update={"max_source_length": cfg.tiny.max_positions + 1})
    with pytest.raises(ConfigError, match="exceeds the checkpoint's"):
        encoder_decoder.load(cfg, checkpoint_source(cfg), [])


def test_long_dialogues_are_cut_and_reported(tiny, caplog):
    cfg, _, tok, splits = tiny
    long = Example("x", "\n".join([splits["train"][0].dialogue] * 10), "요약")
    with caplog.at_level("WARNING", logger="dialsum"):
        feats = encoder_decoder.build_features(cfg, tok, [long, splits["train"][1]], with_labels=True)
    assert len(feats[0]["input_ids"]) == cfg.max_source_length
    assert "1 of 2 dialogues exceed max_source_length=256" in caplog.text
    assert feats[1]["labels"][-1] == tok.eos_token_id and feats[1]["labels"].count(tok.eos_token_id) == 1


def test_generation_uses_the_exempt_rule(tiny):
    cfg, model, tok, splits = tiny
    cfg = cfg.model_copy(
        update={"generation": cfg.generation.model_copy(update={"no_repeat_ngram_size": 1, "max_new_tokens": 12})}
    )
    feats = encoder_decoder.build_features(cfg, tok, splits["dev"][:4], with_labels=False)
    torch.manual_seed(0)
    outs = encoder_decoder.generate(cfg, model, tok, feats)
    exempt = set(encoder_decoder.no_repeat_exempt_ids(cfg, tok))
    for text in outs:
        ids = [i for i in tok(text, add_special_tokens=False)["input_ids"] if i not in exempt]
        assert len(ids) == len(set(ids)) or not ids  # unigram rule: no non-exempt piece twice
