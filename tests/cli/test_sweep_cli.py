"""`dialsum sweep`, `kfold` and `tune-decoding` on the command line: help with examples, one-line input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dialsum.cli.main import main


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ("sweep", "dialsum sweep --models qwen3-4b --space configs/sweeps/qwen3-4b.yaml"),
        ("kfold", "dialsum kfold --models kobart --k 5"),
        ("tune-decoding", "dialsum tune-decoding --run outputs/"),
    ],
)
def test_help_shows_an_example(command: str, example: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and example in out


def error_of(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dialsum: error: ")
    return err


def test_bad_sweep_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"training.learning_rte": {"low": 1e-4, "high": 1e-2}}}))
    assert f"{space}: params.training.learning_rte: unknown key" in error_of(
        ["sweep", "--models", "tiny-bart", "--space", str(space)], capsys
    )
    assert "--space is needed to start a study" in error_of(["sweep", "--models", "tiny-bart"], capsys)
    good = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "tiny-bart.yaml"
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert "set PREFECT_API_URL" in error_of(
        ["sweep", "--models", "tiny-bart", "--space", str(good), "--target", "docker-gpu"], capsys
    )
    assert "unknown target 'gpu'" in error_of(
        ["sweep", "--models", "tiny-bart", "--space", str(good), "--target", "gpu"], capsys
    )
    assert "--trials must be at least 1" in error_of(
        ["sweep", "--models", "tiny-bart", "--space", str(good), "--trials", "0"], capsys
    )


def test_bad_kfold_and_tune_decoding_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "--k must be at least 2" in error_of(["kfold", "--models", "tiny-bart", "--k", "1"], capsys)
    assert "unknown model 'tiny-brat'" in error_of(["kfold", "--models", "tiny-brat"], capsys)
    assert "not a saved run folder" in error_of(["tune-decoding", "--run", str(tmp_path)], capsys)
