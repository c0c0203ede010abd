"""Stand-in checkpoints keep what the real ones have (vocabulary, special tokens and their ids, template,
generation config) and reduce only depth and width; preflight covers the Llama profile through them."""

from __future__ import annotations

import json

import pytest
from support.processes import REPO
from transformers import AutoConfig, AutoTokenizer

from dialsum.cli.main import main
from dialsum.data import read_split
from dialsum.models import standin
from dialsum.models.preflight import run

SHARED = REPO.parent / "shared" / "data"
BLLOSSOM = "reference/llama-3.2-korean-bllossom-3b"


@pytest.fixture(scope="module")
def llama_tokenizer(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    shared = SHARED
    texts = [
        t
        for split in ("dev", "test")
        for ex in read_split(shared / "competition" / f"{split}.csv", split)
        for t in (ex.dialogue, ex.summary)
        if t
    ]
    return standin.llama3_tokenizer(shared / BLLOSSOM, texts, tmp_path_factory.mktemp("llama-tokenizer"))


def test_the_llama_stand_in_tokenizer_has_llama3s_ids_special_tokens_and_the_bllossom_template(
    shared_data, llama_tokenizer
):
    tok = AutoTokenizer.from_pretrained(llama_tokenizer)
    reference = json.loads((shared_data / BLLOSSOM / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert len(tok) == 128256 and len(reference) == 256
    assert {int(i): e["content"] for i, e in reference.items()} == {
        i: tok.convert_ids_to_tokens(i) for i in range(128000, 128256)
    }
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id, tok.pad_token) == (
        "<|begin_of_text|>",
        128000,
        "<|eot_id|>",
        128009,
        "<|eot_id|>",
    )
    assert tok.chat_template == (shared_data / BLLOSSOM / "chat_template.jinja").read_text(encoding="utf-8")
    text = "#Person1#: 안녕하세요, 2024년 7월 26일에 뵙겠습니다!\n#Person2#: 네."
    ids = tok(text)["input_ids"]
    assert ids[0] == 128000 and max(ids[1:]) < 128000 and tok.decode(ids[1:]) == text  # byte-level: lossless


def test_stand_in_checkpoints_keep_the_real_vocabulary_and_token_ids(shared_data, tmp_path):
    bart = AutoConfig.from_pretrained(
        standin.kobart(shared_data / "reference" / "kobart-tokenizer", tmp_path / "kobart")
    )
    real = json.loads((shared_data / "reference" / "kobart-tokenizer" / "config.json").read_text())
    assert (bart.vocab_size, bart.max_position_embeddings, bart.decoder_start_token_id, bart.pad_token_id) == (
        real["vocab_size"],
        real["max_position_embeddings"],
        real["decoder_start_token_id"],
        real["pad_token_id"],
    )
    assert (bart.d_model, bart.encoder_layers, bart.decoder_layers, bart.dropout) == (64, 1, 1, 0.0)
    qwen = standin.qwen3(shared_data / "reference" / "qwen3-4b-instruct-2507", tmp_path / "qwen3")
    config = AutoConfig.from_pretrained(qwen)
    assert (config.vocab_size, config.eos_token_id, config.tie_word_embeddings, config.num_hidden_layers) == (
        151936,
        151645,
        True,
        1,
    )
    assert json.loads((qwen / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]
    assert len(AutoTokenizer.from_pretrained(qwen)) == 151669


def test_preflight_covers_the_llama_profile_with_the_stand_in_tokenizer(shared_data, llama_tokenizer, capsys):
    data = shared_data / "competition"
    assert (
        main(
            [
                "preflight",
                "--models",
                "llama-3.2-korean-3b",
                "--data",
                str(data),
                "--tokenizer",
                f"llama-3.2-korean-3b={llama_tokenizer}",
            ]
        )
        == 0
    )
    assert "llama-3.2-korean-3b (causal_lm; tokenizer" in capsys.readouterr().out
    (report,), problems = run(["llama-3.2-korean-3b"], data_dir=data, tokenizers=[str(llama_tokenizer)])
    assert problems == [] and report.references == report.reachable == 499
    dev = next(s for s in report.splits if s.split == "dev")
    assert dev.round_trip == 499 and dev.inputs_cut == 0
    overhead = {p - d for p, d in zip(dev.prompt, dev.dialogue)}
    assert len(overhead) == 1 and overhead.pop() > 60  # the Bllossom header, system prompt and instruction
