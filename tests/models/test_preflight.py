"""Preflight on the real tokenizers and dev set (skipped without ../shared) and on the bundled sample."""

import pytest

from dialsum.cli.main import main
from dialsum.config import load_model_config
from dialsum.data import load_splits, placeholders_in, read_split
from dialsum.errors import ConfigError, PreflightError
from dialsum.models.preflight import (
    PreflightFailed,
    check,
    gate,
    load_checked_tokenizer,
    run,
)

REAL = {"kobart": "kobart-tokenizer", "qwen3-4b": "qwen3-4b-instruct-2507"}
_CACHE = {}


def _report(shared, name):
    if name not in _CACHE:
        reports, problems = run(
            [name], data_dir=shared / "competition", tokenizers=[str(shared / "reference" / REAL[name])]
        )
        _CACHE[name] = reports[0], problems
    return _CACHE[name]


@pytest.mark.parametrize("name", sorted(REAL))
def test_shipped_configs_reach_every_dev_reference(shared_data, name):
    report, problems = _report(shared_data, name)
    assert report.references == 499 and report.reachable == 499 and problems == []
    assert report.blocked == 0 and report.too_long == 0
    assert load_model_config(name).generation.max_new_tokens >= report.longest


@pytest.mark.parametrize("name, least", [("kobart", 498), ("qwen3-4b", 499)])
def test_summaries_survive_encode_decode(shared_data, name, least):
    report, _ = _report(shared_data, name)
    dev = next(s for s in report.splits if s.split == "dev")
    assert dev.rows == 499 and dev.round_trip >= least


def test_no_dev_or_test_dialogue_is_cut_for_kobart(shared_data):
    report, _ = _report(shared_data, "kobart")
    assert {s.split: s.inputs_cut for s in report.splits} == {"dev": 0, "test": 0}


def test_blocking_setting_fails_with_one_line_and_force_goes_on(shared_data, tmp_path, capsys):
    bad = tmp_path / "kobart-nr2.yaml"
    bad.write_text(
        "type: encoder_decoder\nmodel: digit82/kobart-summarization\n"
        "generation: {no_repeat_ngram_size: 2, max_new_tokens: 40}\n"
    )
    args = [
        "preflight",
        "--models",
        str(bad),
        "--data",
        str(shared_data / "competition"),
        "--tokenizer",
        str(shared_data / "reference" / "kobart-tokenizer"),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "generation.no_repeat_ngram_size=2 blocks" in err[0] and "generation.max_new_tokens=40" in err[0]
    assert main(args + ["--force"]) == 0


def test_gate_stops_a_run_unless_forced():
    cfg = load_model_config("tiny-bart")
    cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"max_new_tokens": 5})})
    from dialsum.models import checkpoint_source

    splits = load_splits(None)
    with pytest.raises(PreflightError, match=r"generation.max_new_tokens=5 is shorter than \d+ of 48 dev references"):
        gate(cfg, splits, checkpoint_source(cfg))
    assert gate(cfg, splits, checkpoint_source(cfg), force=True).too_long > 0


@pytest.mark.parametrize("name", ["tiny-bart", "tiny-llama", "tiny-qwen3", "tiny-llama-qlora"])
def test_tiny_profiles_pass_on_the_sample(name, capsys):
    assert main(["preflight", "--models", name]) == 0
    out = capsys.readouterr().out
    assert "dev references reachable: 48/48 (100.0%)" in out and "train  400" in out


def test_real_config_without_hub_or_tokenizer_is_one_clear_error():
    cfg = load_model_config("qwen3-4b")
    with pytest.raises(ConfigError, match="a profile YAML at a local folder and pass that YAML to --models"):
        load_checked_tokenizer(cfg, cfg.model, [])


def test_preflight_reports_the_other_models_when_a_tokenizer_cannot_load():
    with pytest.raises(PreflightFailed, match=r"qwen3-4b: cannot load .*--tokenizer MODEL=PATH") as caught:
        run(["qwen3-4b", "tiny-bart"])
    assert [r.model for r in caught.value.reports] == ["tiny-bart"]


def test_percentiles_and_cuts_are_counted(shared_data):
    cfg = load_model_config("qwen3-4b").model_copy(
        update={
            "tokenizer": str(shared_data / "reference" / "qwen3-4b-instruct-2507"),
            "max_prompt_length": 300,
            "max_target_length": 40,
        }
    )
    dev = read_split(shared_data / "competition" / "dev.csv", "dev")
    tok = load_checked_tokenizer(cfg, cfg.model, placeholders_in(dev))
    report = check(cfg, tok, {"dev": dev}, "qwen3")
    stats = report.splits[0]
    assert stats.inputs_cut == sum(n > 300 for n in stats.prompt) > 0
    assert stats.targets_cut == sum(n > 40 for n in stats.summary) > 0
    assert all(p - d == stats.prompt[0] - stats.dialogue[0] > 0 for p, d in zip(stats.prompt, stats.dialogue))
