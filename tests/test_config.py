from pathlib import Path

import pytest

from dialsum.config import (
    FAMILIES,
    available_models,
    load_model_config,
)
from dialsum.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "configs" / "models").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_yaml_loads(name):
    cfg = load_model_config(name)
    assert cfg.name == name
    assert isinstance(cfg, FAMILIES[cfg.type])


def test_real_llm_configs_use_qlora():
    for name, model in [
        ("llama-3.2-korean-3b", "Bllossom/llama-3.2-Korean-Bllossom-3B"),
        ("qwen3-4b", "Qwen/Qwen3-4B-Instruct-2507"),
    ]:
        cfg = load_model_config(name)
        q, lora = cfg.quantization, cfg.lora
        assert cfg.model == model and not cfg.trust_remote_code
        assert (q.load_in_4bit, q.quant_type, q.double_quant, q.compute_dtype) == (True, "nf4", True, "bfloat16")
        assert (lora.r, lora.alpha, lora.dropout) == (16, 32, 0.05)
        assert len(set(lora.target_modules)) == 7
    assert load_model_config("kobart").model == "digit82/kobart-summarization"
    pins = {name: load_model_config(name).revision for name in ("kobart", "llama-3.2-korean-3b", "qwen3-4b")}
    assert pins == {
        "kobart": "main",
        "llama-3.2-korean-3b": "e68fbb0d9c2a4031b0d61b14014eac1a4810ac2e",
        "qwen3-4b": "cdbee75f17c01a7cc42f958dc650907174af0554",
    }
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


def test_candidate_settings_that_cannot_work_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"num_beams 4 cannot give num_candidates 8; raise num_beams or sample"):
        load_model_config(
            _write(
                tmp_path,
                "type: encoder_decoder\nmodel: x\n"
                "generation: {num_beams: 4, num_candidates: 8, candidate_method: beam}\n",
            )
        )
    with pytest.raises(
        ConfigError,
        match=r"candidate_method 'beam' is not available for type causal_lm; "
        r"use one of epsilon, temperature",
    ):
        load_model_config(
            _write(
                tmp_path,
                "type: causal_lm\nmodel: x\ninstruction: y\ngeneration: {num_candidates: 4, candidate_method: beam}\n",
            )
        )
    with pytest.raises(ConfigError, match=r"generation\.candidate_epsilon: Input should be less than 1"):
        load_model_config(
            _write(tmp_path, "type: causal_lm\nmodel: x\ninstruction: y\ngeneration: {candidate_epsilon: 1.5}\n")
        )
    with pytest.raises(ConfigError, match=r"generation\.num_candidates: Input should be greater than or equal to 1"):
        load_model_config(_write(tmp_path, "type: encoder_decoder\nmodel: x\ngeneration: {num_candidates: 0}\n"))


def test_candidates_are_off_by_default_with_each_familys_method():
    for name, method in (("kobart", "beam"), ("qwen3-4b", "epsilon"), ("llama-3.2-korean-3b", "epsilon")):
        cfg = load_model_config(name)
        assert (cfg.generation.num_candidates, cfg.candidate_method) == (1, method)
    assert load_model_config("qwen3-4b").generation.candidate_epsilon == 0.02
    kobart = load_model_config("kobart")
    assert kobart.generation.num_beams >= 4  # beam n-best up to 4 candidates without raising num_beams


# ---------------------------------------------------------------- command-line overrides


def test_overrides_change_the_config_and_its_fingerprint():
    from dialsum.config import dump_config
    from dialsum.data.source import config_fingerprint

    base = load_model_config("qwen3-4b")
    cfg = load_model_config(
        "qwen3-4b",
        [
            "training.learning_rate=1e-4",
            "lora.r=8",
            "model=/tmp",
            "chat_template_kwargs.enable_thinking=true",
            "generation.num_beams=2",
            "training.learning_rate=3e-4",
        ],
    )  # a later override wins
    assert (cfg.training.learning_rate, cfg.lora.r, cfg.lora.alpha) == (3e-4, 8, base.lora.alpha)
    assert cfg.model == "/tmp" and cfg.chat_template_kwargs == {"enable_thinking": True}
    assert cfg.generation.num_beams == 2 and cfg.training.batch_size == base.training.batch_size
    assert "learning_rate: 0.0003" in dump_config(cfg)
    assert config_fingerprint(cfg) != config_fingerprint(base)
    assert config_fingerprint(load_model_config("qwen3-4b", [])) == config_fingerprint(base)
    assert load_model_config("qwen3-4b", ["quantization=null", "lora=null"]).lora is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.lerning_rate=1", "unknown key `training.lerning_rate`; did you mean `training.learning_rate`?"),
        ("lerning_rate=1", "unknown key `lerning_rate`; did you mean `training.learning_rate`?"),
        ("generation.num_beam=2", "did you mean `generation.num_beams`?"),
        ("training.learning_rate=fast", "--set training.learning_rate=fast: Input should be a valid number"),
        ("training.epochs=-1", "--set training.epochs=-1: Input should be greater than 0"),
        ("generation.num_beams.x=1", "`generation.num_beams` is a value, not a section"),
        ("type=causal_lm", "the family (`type`) is fixed by the profile"),
        ("training.learning_rate", "expected KEY=VALUE"),
        ("lora.r=8", "lora is only supported for type causal_lm"),  # kobart: validators see overrides like YAML
    ],
)
def test_bad_overrides_name_the_override(override, message):
    with pytest.raises(ConfigError) as err:
        load_model_config("kobart", [override])
    assert message in str(err.value) and "kobart.yaml" in str(err.value)


def test_an_overlay_file_is_its_leaves_as_overrides(tmp_path):
    from dialsum.config import dump_config, overlay_overrides

    overlay = tmp_path / "best.yaml"
    overlay.write_text(
        "training: {learning_rate: 1.0e-4, warmup_steps: 0.1}\nlora: {r: 8, target_modules: [q_proj, v_proj]}\n"
        "chat_template_kwargs: {enable_thinking: false}\n",
        encoding="utf-8",
    )
    leaves = overlay_overrides(overlay)
    assert sorted(leaves) == sorted(
        [
            "training.learning_rate=0.0001",
            "training.warmup_steps=0.1",
            "lora.r=8",
            "lora.target_modules=[q_proj, v_proj]",
            "chat_template_kwargs.enable_thinking=false",
        ]
    )
    by_overlay = load_model_config("qwen3-4b", leaves)
    by_set = load_model_config(
        "qwen3-4b",
        [
            "training.learning_rate=1e-4",
            "training.warmup_steps=0.1",
            "lora.r=8",
            "lora.target_modules=[q_proj, v_proj]",
        ],
    )
    assert dump_config(by_overlay) == dump_config(by_set)


def test_shipped_profiles_then_local_configs_then_config_dir_file_by_file(tmp_path, monkeypatch):
    from dialsum.config import config_dirs, packaged_configs
    from dialsum.settings import get_settings

    assert sorted(p.stem for p in (packaged_configs() / "models").glob("*.yaml")) == sorted(SHIPPED)
    local, custom = tmp_path / "configs", tmp_path / "custom"
    (local / "models").mkdir(parents=True)
    (local / "models" / "tiny-bart.yaml").write_text(
        (packaged_configs() / "models" / "tiny-bart.yaml")
        .read_text()
        .replace("max_source_length: 256", "max_source_length: 200")
    )
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
