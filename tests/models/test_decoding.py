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


# ---------------------------------------------------------------- candidates


@cache
def _tiny(name: str, **generation):
    from dialsum.data import load_splits
    from dialsum.models import checkpoint_source, family

    cfg = load_model_config(name)
    cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update=generation)})
    splits = load_splits(None)
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"] + splits["dev"]))
    return cfg, fam, model, tok, fam.build_features(cfg, tok, splits["dev"][:6], with_labels=False)


def test_beam_candidates_carry_the_beams_log_probabilities_and_the_best_is_the_prediction():
    cfg, fam, model, tok, feats = _tiny(
        "tiny-bart", num_beams=4, num_candidates=4, candidate_method="beam", max_new_tokens=10
    )
    preds, candidates = fam.generate_candidates(cfg, model, tok, feats)
    assert preds == fam.generate(cfg, model, tok, feats)
    assert all(len(c) == 4 and c[0]["text"] == p for c, p in zip(candidates, preds))
    batch = fam.collate(tok, feats)
    scorer = decoding.SequenceLogprobs(fam.stop_ids(cfg, tok, model), beams=4)
    out = model.generate(
        **batch,
        generation_config=fam.candidate_generation_config(cfg, model, tok),
        logits_processor=[scorer],
        output_scores=True,
    )
    ours = scorer.totals(out.sequences, out.beam_indices)
    stock = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices).sum(-1)
    assert [lp for lp, _ in ours] == pytest.approx(stock.tolist(), abs=1e-4)
    assert [n for _, n in ours] == (out.beam_indices >= 0).sum(-1).tolist()


def test_sampled_candidates_are_seeded_and_scored_under_the_model_before_sampling_warpers():
    cfg, fam, model, tok, feats = _tiny(
        "tiny-llama", num_candidates=3, candidate_method="temperature", candidate_temperature=1.5, max_new_tokens=8
    )
    preds, candidates = fam.generate_candidates(cfg, model, tok, feats)
    assert preds == fam.generate(cfg, model, tok, feats)  # the prediction stays greedy
    assert fam.generate_candidates(cfg, model, tok, feats) == (preds, candidates)  # seeded by training.seed
    reseeded = cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": 7})})
    assert fam.generate_candidates(reseeded, model, tok, feats)[1] != candidates
    assert len({c["text"] for row in candidates for c in row}) > 6  # an untrained model samples widely
    batch = fam.collate(tok, feats[:2], for_generation=True)
    width, rows = batch["input_ids"].shape[1], model.get_input_embeddings().num_embeddings
    gen = fam.candidate_generation_config(cfg, model, tok)
    scorer = decoding.SequenceLogprobs(fam.stop_ids(cfg, tok, model))
    with decoding.seeded(0):
        out = model.generate(
            **batch,
            generation_config=gen,
            logits_processor=[scorer],
            output_logits=True,
            suppress_tokens=list(range(len(tok), rows)),
        )
    logits = torch.stack(out.logits, 1).float()  # raw logits, before suppression and temperature
    logits[..., len(tok) :] = -float("inf")
    expected = torch.log_softmax(logits, -1).gather(2, out.sequences[:, width:, None]).squeeze(2)
    stops = torch.tensor(fam.stop_ids(cfg, tok, model))
    ended = torch.isin(out.sequences[:, width:], stops).long().cumsum(1)
    live = (ended == 0) | ((ended == 1) & torch.isin(out.sequences[:, width:], stops))  # up to the first end token
    ours = scorer.totals(out.sequences)
    assert [lp for lp, _ in ours] == pytest.approx((expected * live).sum(1).tolist(), abs=1e-4)
    assert [n for _, n in ours] == live.sum(1).tolist()


def test_sampled_candidates_count_in_the_token_budget():
    from dialsum.models.common import batched_generate

    feats = [{"input_ids": [0] * n} for n in (10, 20, 30, 40)]
    seen = []
    batched_generate(feats, 8, lambda b: seen.append(len(b)) or [""] * len(b), max_tokens=200, new_tokens=10, copies=4)
    assert seen == [1, 1, 1, 1]  # (40 + 10) x 4 copies fills the budget alone
    seen.clear()
    batched_generate(feats, 8, lambda b: seen.append(len(b)) or [""] * len(b), max_tokens=200, new_tokens=10)
    assert sum(seen) == 4 and len(seen) < 4
