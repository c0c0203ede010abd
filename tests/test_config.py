from pathlib import Path

import pytest

from dialsum.config import CausalLMConfig, EncoderDecoderConfig, available_models, load_model_config
from dialsum.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "configs" / "models").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_yaml_loads(name):
    cfg = load_model_config(name)
    assert cfg.name == name
    assert isinstance(cfg, {"encoder_decoder": EncoderDecoderConfig, "causal_lm": CausalLMConfig}[cfg.type])


def test_real_llm_configs_use_qlora():
    for name, model in [("llama-3.2-korean-3b", "Bllossom/llama-3.2-Korean-Bllossom-3B"),
                        ("qwen3-4b", "Qwen/Qwen3-4B-Instruct-2507")]:
        cfg = load_model_config(name)
        q, lora = cfg.quantization, cfg.lora
        assert cfg.model == model and not cfg.trust_remote_code
        assert (q.load_in_4bit, q.quant_type, q.double_quant, q.compute_dtype) == (True, "nf4", True, "bfloat16")
        assert (lora.r, lora.alpha, lora.dropout) == (16, 32, 0.05)
        assert len(set(lora.target_modules)) == 7
    assert load_model_config("kobart").model == "digit82/kobart-summarization"
    assert load_model_config("qwen3-4b").chat_template_kwargs == {"enable_thinking": False}


def _write(tmp_path, text):
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_unknown_key_names_file_and_field(tmp_path):
    path = _write(tmp_path, "type: encoder_decoder\nmodel: x\ntraining: {learnig_rate: 1}\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: training\.learnig_rate: Extra inputs"):
        load_model_config(path)


def test_type_selects_schema(tmp_path):
    # max_prompt_length belongs to causal_lm only
    with pytest.raises(ConfigError, match="max_prompt_length"):
        load_model_config(_write(tmp_path, "type: encoder_decoder\nmodel: x\nmax_prompt_length: 10\n"))
    with pytest.raises(ConfigError, match="type: must be"):
        load_model_config(_write(tmp_path, "type: seq2seq\nmodel: x\n"))


def test_four_bit_only_for_causal_lm(tmp_path):
    with pytest.raises(ConfigError, match="only supported for type causal_lm"):
        load_model_config(_write(tmp_path, "type: encoder_decoder\nmodel: x\nquantization: {load_in_4bit: true}\n"))


def test_fp16_with_bf16_compute_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="mixes dtypes"):
        load_model_config(_write(tmp_path, "type: causal_lm\nmodel: x\ntraining: {precision: fp16}\n"))


def test_unknown_model_lists_available():
    with pytest.raises(ConfigError) as err:
        load_model_config("no-such-model")
    assert "available:" in str(err.value) and "tiny-bart" in str(err.value)
    assert set(SHIPPED) == set(available_models())


def test_family_defaults_for_schedule_optimizer_and_evaluation():
    for name in ("llama-3.2-korean-3b", "qwen3-4b"):
        t = load_model_config(name).training
        assert (t.lr_scheduler, t.optimizer) == ("cosine", "paged_adamw_8bit")
    t = load_model_config("kobart").training
    assert (t.lr_scheduler, t.optimizer) == ("linear", "adamw")
    for name in ("kobart", "qwen3-4b"):
        t = load_model_config(name).training
        assert t.best_metric == "dev_score" and t.load_best_model and t.eval_every and t.eval_score_rows


def test_shipped_profiles_then_local_configs_then_config_dir_file_by_file(tmp_path, monkeypatch):
    from dialsum.config import config_dirs, packaged_configs
    from dialsum.settings import get_settings

    assert sorted(p.stem for p in (packaged_configs() / "models").glob("*.yaml")) == sorted(SHIPPED)
    local, custom = tmp_path / "configs", tmp_path / "custom"
    (local / "models").mkdir(parents=True)
    (local / "models" / "tiny-bart.yaml").write_text(
        (packaged_configs() / "models" / "tiny-bart.yaml").read_text().replace("max_source_length: 256", "max_source_length: 200"))
    (local / "models" / "mine.yaml").write_text("type: encoder_decoder\nmodel: x\n")
    (custom / "base").mkdir(parents=True)
    (custom / "base" / "encoder_decoder.yaml").write_text("type: encoder_decoder\nmax_target_length: 77\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIALSUM_CONFIG_DIR")
    get_settings.cache_clear()
    assert config_dirs() == [Path("configs"), packaged_configs()]
    assert load_model_config("tiny-bart").max_source_length == 200  # ./configs over the shipped file
    assert load_model_config("kobart").max_source_length == 1024  # other files still shipped
    assert "mine" in available_models() and set(SHIPPED) < set(available_models())
    monkeypatch.setenv("DIALSUM_CONFIG_DIR", str(custom))
    get_settings.cache_clear()
    assert load_model_config("mine").max_target_length == 77  # DIALSUM_CONFIG_DIR's base, ./configs' model
    assert load_model_config("kobart").max_target_length == 77 and load_model_config("kobart").max_source_length == 1024
