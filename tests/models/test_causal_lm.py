from pathlib import Path

import pytest
import torch

from dialsum.config import load_model_config
from dialsum.data import Example, load_splits, placeholders_in
from dialsum.engine.trainer import fit
from dialsum.models import causal_lm, checkpoint_source, family


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
        assert {"#PhoneNumber#", " #PhoneNumber#"} & set(tok.convert_ids_to_tokens(ids))
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
    assert changed and all("lora_" in n or n.endswith(".delta") for n in changed)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == changed


# ---------------------------------------------------------------- real templates and tokenizers

from datetime import datetime as _datetime  # noqa: E402
from unittest import mock  # noqa: E402

import transformers.utils.chat_template_utils as _ctu  # noqa: E402
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM  # noqa: E402


def _clock(day: str):
    class Frozen(_datetime):
        @classmethod
        def now(cls, tz=None):
            return _datetime.fromisoformat(day)

    return mock.patch.object(_ctu, "datetime", Frozen)


def _real_template_cfg(shared, name: str):
    cfg = load_model_config(name)
    if name == "qwen3-4b":
        return cfg.model_copy(update={"tokenizer": str(shared / "reference" / "qwen3-4b-instruct-2507")}), cfg.model
    template = shared / "reference" / "llama-3.2-korean-bllossom-3b" / "chat_template.jinja"
    tiny = load_model_config("tiny-llama")  # the Bllossom tokenizer itself is not available: its template is
    return cfg.model_copy(update={"chat_template": str(template)}), checkpoint_source(tiny)


@pytest.mark.parametrize("name", ["llama-3.2-korean-3b", "qwen3-4b"])
def test_prompts_are_the_same_bytes_when_the_clock_moves(shared_data, name, sample):
    cfg, source = _real_template_cfg(shared_data, name)
    ex = sample["dev"][:2]
    prompts = []
    for day in ("2025-01-01T09:00:00", "2031-12-31T23:59:00"):
        with _clock(day):
            tok, _ = causal_lm.load_tokenizer(cfg, source, placeholders_in(sample["train"]))
            feats = causal_lm.build_features(cfg, tok, ex, with_labels=False)
            prompts.append([tok.decode(f["input_ids"]).encode() for f in feats])
    assert prompts[0] == prompts[1]
    if name.startswith("llama"):
        assert b"Today Date: 26 Jul 2024" in prompts[0][0]
        raw = (shared_data / "reference" / "llama-3.2-korean-bllossom-3b" / "chat_template.jinja").read_text()
        with _clock("2031-12-31T23:59:00"):  # the unpinned template does follow the clock
            assert (
                "31 Dec 2031"
                in _ctu.render_jinja_template([[{"role": "user", "content": "x"}]], chat_template=raw)[0][0]
            )


def test_pinned_strftime_now_answers_with_the_fixed_date():
    from datetime import date

    template = "{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now(\"%d %b %Y\") }}"
    pinned = causal_lm.pin_template_clock(template, date(2024, 7, 26))
    with _clock("2031-12-31T23:59:00"):
        assert (
            _ctu.render_jinja_template([[{"role": "user", "content": "x"}]], chat_template=pinned)[0][0]
            == "2024-07-26|26 Jul 2024"
        )


def test_a_run_saved_with_the_bllossom_template_loads_again_with_the_same_prompts(shared_data, sample, tmp_path):
    """The pinned template is not what a run folder saves, and pinning a pinned template is harmless: a saved Llama
    run (retry after fit, predict --run, champion) loads again and renders the same bytes."""
    from types import SimpleNamespace

    cfg, source = _real_template_cfg(shared_data, "llama-3.2-korean-3b")
    raw = Path(cfg.chat_template).read_text(encoding="utf-8")
    tok, _ = causal_lm.load_tokenizer(cfg, source, placeholders_in(sample["train"]))
    causal_lm.save(SimpleNamespace(save_pretrained=lambda folder: None), tok, tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == raw
    with _clock("2031-12-31T23:59:00"):
        again, _ = causal_lm.load_tokenizer(
            cfg.model_copy(update={"chat_template": None}), source, [], adapter=tmp_path
        )
    feats = [causal_lm.build_features(cfg, t, sample["dev"][:2], with_labels=False) for t in (tok, again)]
    assert feats[0] == feats[1] and b"Today Date: 26 Jul 2024" in again.decode(feats[1][0]["input_ids"]).encode()
    pinned = tok.chat_template
    assert causal_lm.pin_template_clock(pinned, cfg.template_date) == pinned
    assert causal_lm.unpin_template_clock(pinned) == raw and causal_lm.unpin_template_clock(raw) == raw


@pytest.fixture(scope="module")
def qwen_vocab_model():
    """A 1-layer, 8-wide random Qwen3 with the real vocabulary size and the checkpoint's declared end tokens."""
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        intermediate_size=16,
        tie_word_embeddings=False,
        eos_token_id=151645,
        pad_token_id=151643,
        bos_token_id=151643,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[151645, 151643], pad_token_id=151643)
    return model


def test_new_placeholder_rows_start_at_the_mean_of_their_pieces(shared_data, qwen_vocab_model):
    from dialsum.models.common import fit_embeddings

    cfg, _ = _real_template_cfg(shared_data, "qwen3-4b")
    model = qwen_vocab_model
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    tok, pieces = causal_lm.load_tokenizer(cfg, cfg.model, ["#Person1#", "#PhoneNumber#"])
    assert len(pieces) == 4 and all(i >= 151669 for i in pieces)  # unused rows of the real checkpoint
    fit_embeddings(model, tok, pieces)
    for new_id, old_ids in pieces.items():
        assert len(old_ids) > 1 and max(old_ids) < 151669
        text = tok.convert_ids_to_tokens(new_id)
        assert tok(text, add_special_tokens=False)["input_ids"] == [new_id]
        for weight, before in (
            (model.get_input_embeddings().weight, before_in),
            (model.get_output_embeddings().weight, before_out),
        ):
            torch.testing.assert_close(weight[new_id], before[old_ids].mean(0), rtol=0, atol=1e-6)
    untouched = [i for i in range(151600, 151936) if i not in pieces]
    assert torch.equal(model.get_input_embeddings().weight[untouched], before_in[untouched])


def test_generation_stops_on_every_end_token_the_checkpoint_declares(shared_data, qwen_vocab_model):
    cfg, _ = _real_template_cfg(shared_data, "qwen3-4b")
    tok, _ = causal_lm.load_tokenizer(cfg, cfg.model, [])
    ids = causal_lm.stop_ids(cfg, tok, qwen_vocab_model)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_end|>")
    assert {151645, 151643} <= set(ids)  # <|im_end|> and <|endoftext|>
    gen = causal_lm.generation_config(cfg, qwen_vocab_model, tok)
    assert set(gen.eos_token_id) == set(ids) and gen.max_new_tokens == cfg.generation.max_new_tokens


def test_max_target_length_is_honoured_and_cuts_are_reported(sample, caplog):
    cfg, _, tok = _load("tiny-llama", sample)
    cfg = cfg.model_copy(update={"max_target_length": 8})
    long = [ex for ex in sample["train"][:40] if len(tok(ex.summary, add_special_tokens=False)["input_ids"]) >= 8]
    with caplog.at_level("WARNING", logger="dialsum"):
        feats = causal_lm.build_features(cfg, tok, long, with_labels=True)
    assert all(
        sum(x != -100 for x in f["labels"]) == 8 and f["labels"][-1] == causal_lm.stop_ids(cfg, tok)[0] for f in feats
    )
    assert f"{len(long)} of {len(long)} summaries exceed max_target_length=8" in caplog.text


def test_each_data_parallel_rank_loads_4bit_weights_on_its_own_gpu(monkeypatch):
    from dialsum.models.causal_lm import _local_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert _local_device() == 3


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
        "base_model.model.model.embed_tokens.delta"
    }  # one small delta, tied to the output layer
    for cfg, model, tok, tol in ((plain_cfg, plain, plain_tok, 1e-5), (qcfg, qlora, qtok, 2e-3)):
        model.eval()  # no LoRA dropout: both computations must see the same function
        rows = [Example(e.fname, e.dialogue + " " + NEW[0], e.summary + " " + NEW[1]) for e in sample["train"][:6]]
        batch = causal_lm.collate(tok, causal_lm.build_features(cfg, tok, rows, with_labels=True))
        grads = []
        for compute in (
            lambda: causal_lm.loss(model, batch),  # noqa: B023
            lambda: token_loss_sum(
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1],  # noqa: B023
                batch["labels"][:, 1:],  # noqa: B023
            ),
        ):
            model.zero_grad(set_to_none=True)
            value = compute()
            value.backward()
            grads.append(
                (value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            )
        (ours, g_ours), (full, g_full) = grads
        torch.testing.assert_close(ours, full, rtol=tol, atol=tol)
        assert g_ours.keys() == g_full.keys() and g_ours
        for n in g_full:
            torch.testing.assert_close(
                g_ours[n], g_full[n], rtol=20 * tol, atol=20 * tol * float(g_full[n].abs().max()), msg=n
            )


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


def test_generating_leaves_4bit_weights_in_their_canonical_layout(sample):
    """bitsandbytes repacks 4-bit weights in place at an eval-mode forward on AVX512-BF16 CPUs; the merged prediction
    copy (PEFT's dequantization) and training after an evaluation must still read the canonical layout."""
    import bitsandbytes as bnb

    cfg, model, tok = _adapted(
        "tiny-llama-qlora",
        sample,
        quantization={"compute_dtype": "float32"},
        training={"precision": "fp32"},
        generation={"max_new_tokens": 4, "batch_size": 4},
    )
    before = {n: w.detach().clone() for n, w in causal_lm.inference_model(cfg, model).state_dict().items()}
    rows = [Example(e.fname, e.dialogue) for e in sample["dev"][:4]]
    causal_lm.generate(cfg, model, tok, causal_lm.build_features(cfg, tok, rows, with_labels=False))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    after = causal_lm.inference_model(cfg, model).state_dict()
    assert before.keys() == after.keys()
    for name, weight in before.items():
        assert torch.equal(weight, after[name]), name
