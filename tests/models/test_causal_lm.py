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


NEW = ["#Zipcode9#", "#Handle9#"]  # not in the tiny vocabulary: they get new rows


def _adapted(name, sample, **overrides):
    """A tiny LoRA model with new placeholder rows; LoRA B and the new rows perturbed so merging matters."""
    cfg = load_model_config(name)
    cfg = cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) if v else v for k, v in overrides.items()})
    model, tok = causal_lm.load(cfg, checkpoint_source(cfg), placeholders_in(sample["train"]) + NEW)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * (0.5 if "lora_B" in n else 1.0))
    return cfg, model, tok


def test_label_only_loss_equals_full_logits_loss(sample):
    from dialsum.models.common import token_loss_sum

    plain_cfg, plain, plain_tok = _load("tiny-llama", sample)
    qcfg, qlora, qtok = _adapted("tiny-llama-qlora", sample)
    assert {n for n, p in qlora.named_parameters() if p.requires_grad and "lora_" not in n} == {
        "base_model.model.model.embed_tokens.delta"}  # one small delta, tied to the output layer
    for cfg, model, tok, tol in ((plain_cfg, plain, plain_tok, 1e-5), (qcfg, qlora, qtok, 2e-3)):
        model.eval()  # no LoRA dropout: both computations must see the same function
        rows = [Example(e.fname, e.dialogue + " " + NEW[0], e.summary + " " + NEW[1]) for e in sample["train"][:6]]
        batch = causal_lm.collate(tok, causal_lm.build_features(cfg, tok, rows, with_labels=True))
        grads = []
        for compute in (lambda: causal_lm.loss(model, batch),
                        lambda: token_loss_sum(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1],
                                               batch["labels"][:, 1:])):
            model.zero_grad(set_to_none=True)
            value = compute()
            value.backward()
            grads.append((value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        (ours, g_ours), (full, g_full) = grads
        torch.testing.assert_close(ours, full, rtol=tol, atol=tol)
        assert g_ours.keys() == g_full.keys() and g_ours
        for n in g_full:
            torch.testing.assert_close(g_ours[n], g_full[n], rtol=20 * tol, atol=20 * tol * float(g_full[n].abs().max()), msg=n)


@pytest.mark.parametrize("quantized", [True, False])
def test_merged_generation_equals_unmerged_and_saved_adapter(quantized, sample, tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel

    overrides = {"quantization": {"compute_dtype": "float32"}} if quantized else {"quantization": None}
    overrides["training"] = {"precision": "fp32"}
    overrides["generation"] = {"max_new_tokens": 16, "batch_size": 6}
    cfg, model, tok = _adapted("tiny-llama-qlora", sample, **overrides)
    rows = [Example(e.fname, e.dialogue + " " + NEW[0]) for e in sample["dev"][:12]]
    feats = causal_lm.build_features(cfg, tok, rows, with_labels=False)
    unmerged = causal_lm.generate(cfg, model, tok, feats)
    dense = causal_lm.inference_model(cfg, model)
    assert not isinstance(dense, PeftModel) and not any(isinstance(m, bnb.nn.Linear4bit) for m in dense.modules())
    assert isinstance(model, PeftModel)  # the trained model is left as it was, for saving
    assert causal_lm.generate(cfg, dense, tok, feats) == unmerged
    assert len(set(unmerged)) > 3

    causal_lm.save(model, tok, tmp_path)
    reloaded, tok2 = causal_lm.load(cfg, checkpoint_source(cfg), [], adapter=tmp_path)
    assert causal_lm.generate(cfg, reloaded, tok2, feats) == unmerged
    fresh, _ = causal_lm.load(cfg, checkpoint_source(cfg), placeholders_in(sample["train"]) + NEW)
    assert causal_lm.generate(cfg, fresh, tok, feats) != unmerged  # the adapter and rows matter
