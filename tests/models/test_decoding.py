from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, GenerationConfig, NoRepeatNGramLogitsProcessor

from dialsum.config import load_model_config
from dialsum.data import placeholders_in, read_split
from dialsum.models import decoding, encoder_decoder


def _banned(processor, seq: list[int], vocab: int) -> set[int]:
    scores = processor(torch.tensor([seq]), torch.zeros(1, vocab))
    return set(torch.nonzero(scores[0] == -float("inf")).flatten().tolist())


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_without_exemptions_bans_exactly_what_the_stock_rule_bans(n):
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(0, 6, (8, 30), generator=gen)
    scores = torch.randn(8, 6, generator=gen)
    ours = decoding.ExemptNoRepeatNGram(n, [], vocab_size=6)(ids, scores.clone())
    stock = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
    assert torch.equal(ours, stock)


def test_placeholders_and_spaces_never_blocked_and_prompt_ignored():
    placeholder, space = 7, 8
    proc = decoding.ExemptNoRepeatNGram(2, [placeholder, space], vocab_size=10)
    assert _banned(proc, [1, 7, 2, 3, 7], 10) == set()  # (#Person1#, 2) may repeat
    assert _banned(proc, [1, 8, 2, 8], 10) == set()  # (' ', 2) may repeat
    assert _banned(proc, [1, 4, 2, 3, 4], 10) == {2}  # a plain bigram may not
    after_prompt = decoding.ExemptNoRepeatNGram(2, [], vocab_size=10, start=3)
    assert _banned(after_prompt, [4, 5, 6, 4], 10) == set()  # (4, 5) was in the prompt only
    assert _banned(after_prompt, [4, 5, 6, 4, 5, 4], 10) == {5}


def test_blocked_at_agrees_with_the_processor_step_by_step():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        seq = torch.randint(0, 5, (20,), generator=gen).tolist()
        proc = decoding.ExemptNoRepeatNGram(3, [4], vocab_size=5)
        first = next((t for t in range(1, len(seq)) if seq[t] in _banned(proc, seq[:t], 5)), None)
        assert decoding.blocked_at(seq, 3, [4]) == first


def test_end_tokens_keep_the_checkpoints_own_after_ours():
    class Tok:
        eos_token_id, unk_token_id = 5, 0

    checkpoint = (GenerationConfig(eos_token_id=[7, 8]), AutoConfig.for_model("llama", eos_token_id=9))
    assert decoding.end_token_ids(Tok(), *checkpoint, extra=[6]) == [6, 5, 7, 8, 9]


@cache
def _kobart(shared: Path):
    cfg = load_model_config("kobart").model_copy(update={"tokenizer": str(shared / "reference" / "kobart-tokenizer")})
    dev = read_split(shared / "competition" / "dev.csv", "dev")
    tok, _ = encoder_decoder.load_tokenizer(cfg, cfg.model, placeholders_in(dev))
    return cfg, tok, dev


def test_kobart_tags_are_single_pieces_and_round_trip(shared_data):
    _, tok, _ = _kobart(shared_data)
    text = "#Person2#는 의사가 #Person2#에게 말하고, (#Person1#)을 돕는다고 합니다."
    pieces = tok.tokenize(text)
    assert pieces[:2] == ["#Person2#", "는"] and "#Person1#" in pieces
    assert pieces[pieces.index(" #Person2#") + 1] == "에게"
    assert "▁" not in pieces  # no lone space piece around a tag
    assert decoding.decode(tok, [tok(text, add_special_tokens=False)["input_ids"]]) == [text]


def test_kobart_generation_never_bans_the_next_reference_token(shared_data):
    """Teacher-forced through the real processor: the shipped rule allows every dev reference, n=2 would not."""
    cfg, tok, dev = _kobart(shared_data)
    exempt = encoder_decoder.no_repeat_exempt_ids(cfg, tok)
    targets = encoder_decoder.target_ids(cfg, tok, [ex.summary for ex in dev])
    shipped = decoding.ExemptNoRepeatNGram(cfg.generation.no_repeat_ngram_size, exempt, len(tok))
    stock2 = decoding.ExemptNoRepeatNGram(2, [], len(tok))
    blocked_shipped = blocked_stock = 0
    for ids in targets:
        seq = torch.tensor([[2] + ids])  # decoder start, then the reference
        width = seq.shape[1]
        for t in range(1, width):
            scores = torch.zeros(1, len(tok))
            blocked_shipped += bool(shipped(seq[:, :t], scores)[0, seq[0, t]] == -float("inf"))
            blocked_stock += bool(stock2(seq[:, :t], scores)[0, seq[0, t]] == -float("inf"))
    assert blocked_shipped == 0
    assert blocked_stock > 50  # the stock bigram rule blocks real references
