import pytest
import torch

from dialsum.config import load_model_config
from dialsum.data import Example, load_splits, placeholders_in
from dialsum.models import causal_lm, checkpoint_source, family
from dialsum.trainer import fit


@pytest.fixture(scope="module")
def sample():
    return load_splits(None)


def _load(name, sample):
    cfg = load_model_config(name)
    model, tok = family(cfg).load(cfg, checkpoint_source(cfg), placeholders_in(sample["train"]))
    return cfg, model, tok


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3"])
def test_labels_cover_summary_and_end_of_turn_only(name, sample):
    cfg, _, tok = _load(name, sample)
    ex = sample["train"][0]
    feat = causal_lm.build_features(cfg, tok, [ex], with_labels=True)[0]
    prompt = causal_lm.build_features(cfg, tok, [ex], with_labels=False)[0]["input_ids"]
    n = len(prompt)
    assert feat["input_ids"][:n] == prompt and set(feat["labels"][:n]) == {-100}
    target = feat["labels"][n:]
    assert target[-1] == causal_lm.stop_ids(cfg, tok)[0]
    assert tok.decode(target[:-1]) == ex.summary


def test_qwen3_prompt_uses_template_without_thinking(sample):
    cfg, _, tok = _load("tiny-qwen3", sample)
    text = tok.decode(causal_lm.build_features(cfg, tok, sample["dev"][:1], with_labels=False)[0]["input_ids"])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert cfg.instruction in text and sample["dev"][0].dialogue in text


def test_long_dialogue_truncated_never_the_summary(sample):
    cfg, _, tok = _load("tiny-llama", sample)
    long = Example("x", "\n".join([sample["train"][0].dialogue] * 40), "#Person1#는 병원을 예약합니다.")
    feat = causal_lm.build_features(cfg, tok, [long], with_labels=True)[0]
    prompt_len = sum(1 for label in feat["labels"] if label == -100)
    assert prompt_len == cfg.max_prompt_length
    assert tok.decode(feat["labels"][prompt_len:-1]) == long.summary
    assert any(label != -100 for label in feat["labels"])


def test_placeholders_are_single_tokens_and_survive_decoding(sample):
    for name in ["tiny-bart", "tiny-llama", "tiny-qwen3"]:
        _, _, tok = _load(name, sample)
        text = "#Person1#는 #PhoneNumber#로 #Person2#에게 연락합니다."
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert "#PhoneNumber#" in tok.convert_ids_to_tokens(ids)
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_qlora_on_cpu_base_is_4bit_and_only_lora_changes(sample):
    import bitsandbytes as bnb

    cfg, model, tok = _load("tiny-llama-qlora", sample)
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7 and all(m.weight.quant_type == "nf4" for m in linear4)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    feats = causal_lm.build_features(cfg, tok, sample["train"][:32], with_labels=True)
    result = fit(cfg.training, causal_lm, model, tok, feats, max_steps=3, show_progress=False)
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n for n in changed)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == changed


def test_each_data_parallel_rank_loads_4bit_weights_on_its_own_gpu(monkeypatch):
    from dialsum.models.causal_lm import _local_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert _local_device() == 3
