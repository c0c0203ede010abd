"""`--resume RUN_ID` alone continues a run with what it was started with; a contradicting argument is one line
naming the key and both values, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialsum.cli import checks, resume
from dialsum.cli.main import build_parser, main
from dialsum.errors import ConfigError
from dialsum.storage import LocalStorage


def _started(store: Path, *args: str):
    """A new run's checks, as `train` runs them: they record what the command was given."""
    parsed = build_parser().parse_args(["train", *args, "--storage", str(store)])
    resume.fill(parsed, "train")
    checks.training(parsed)
    return parsed


def _resumed(store: Path, command: str, *args: str):
    parsed = build_parser().parse_args([command, *args, "--storage", str(store)])
    resume.fill(parsed, command)
    return parsed


def test_resume_alone_reuses_the_models_overrides_data_and_flags_of_the_run(tmp_path: Path) -> None:
    from dialsum.data import sample_dir

    store = tmp_path / "store"
    _started(
        store,
        "--mode",
        "multi_model",
        "--models",
        "tiny-bart",
        "tiny-llama",
        "--run-id",
        "r1",
        "--debug",
        "--data",
        str(sample_dir()),
        "--set",
        "training.learning_rate=0.01",
    )
    args = _resumed(store, "train", "--resume", "r1")
    assert (args.mode, args.models, args.overrides) == (
        "multi_model",
        ["tiny-bart", "tiny-llama"],
        ["training.learning_rate=0.01"],
    )
    assert (Path(args.data), args.debug, args.eval_before) == (sample_dir().resolve(), True, False)
    same = _resumed(
        store,
        "train-all",
        "--resume",
        "r1",
        "--models",
        "tiny-bart",
        "tiny-llama",
        "--set",
        "training.learning_rate=0.01",
        "--debug",
    )
    assert same.models == ["tiny-bart", "tiny-llama"] and same.overrides == ["training.learning_rate=0.01"]


def test_a_new_run_without_a_run_id_gets_one_and_records_its_command(tmp_path: Path) -> None:
    from dialsum.state import runs

    args = _started(tmp_path / "store", "--models", "tiny-bart")
    assert args.run_id and runs.read_command(args.run_id, LocalStorage(tmp_path / "store"))["models"] == ["tiny-bart"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--set", "training.learning_rate=0.02"],
            "--resume r1: --set training.learning_rate was 0.01 when the run started, 0.02 now",
        ),
        (
            ["--set", "training.epochs=2"],
            "--resume r1: --set training.learning_rate was 0.01 when the run started, (not set) now",
        ),
        (
            ["--models", "tiny-bart"],
            "--resume r1: --models was tiny-bart tiny-llama when the run started, tiny-bart now",
        ),
        (["--mode", "single"], "--resume r1: the run was started with --mode multi_model, not single"),
        (["--eval-before"], "--resume r1: the run was started without --eval-before"),
    ],
)
def test_a_conflicting_argument_is_one_line_naming_the_key_and_both_values(tmp_path: Path, extra, message) -> None:
    store = tmp_path / "store"
    _started(
        store,
        "--mode",
        "multi_model",
        "--models",
        "tiny-bart",
        "tiny-llama",
        "--run-id",
        "r1",
        "--set",
        "training.learning_rate=0.01",
    )
    with pytest.raises(ConfigError) as info:
        _resumed(store, "train", "--resume", "r1", *extra)
    assert str(info.value).startswith(message)


def test_a_resume_may_change_only_how_an_api_is_called(tmp_path: Path) -> None:
    """A larger budget or more failures allowed (`RUN_CONTROL`) is no contradiction, and reaches the run."""
    store = tmp_path / "store"
    _started(
        store,
        "--models",
        "openai-compatible",
        "--run-id",
        "r1",
        "--set",
        "generation.temperature=0.2",
        "--set",
        "max_cost_usd=1",
    )
    args = _resumed(store, "train", "--resume", "r1", "--set", "max_cost_usd=5", "--set", "max_failed_rows=3")
    assert args.overrides == ["generation.temperature=0.2", "max_cost_usd=5", "max_failed_rows=3"]
    with pytest.raises(ConfigError, match="--set generation.temperature was 0.2 when the run started, 0.7 now"):
        _resumed(store, "train", "--resume", "r1", "--set", "max_cost_usd=5", "--set", "generation.temperature=0.7")


def test_resume_from_the_command_line_refuses_a_conflict_at_once(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    _started(store, "--models", "tiny-bart", "--run-id", "r1", "--set", "training.learning_rate=0.01")
    capsys.readouterr()
    assert main(["train", "--resume", "r1", "--storage", str(store), "--set", "training.learning_rate=0.5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("dialsum: error: --resume r1: --set training.learning_rate was 0.01")
    assert (
        main(
            [
                "train",
                "--resume",
                "r1",
                "--storage",
                str(store),
                "--set",
                "training.learning_rate=0.01",
                "--models",
                "tiny-bart",
                "--run-id",
                "r2",
            ]
        )
        == 2
    )
    assert "name different runs" in capsys.readouterr().err
    assert main(["train", "--storage", str(store)]) == 2
    assert "train: --models is required" in capsys.readouterr().err


def test_a_run_published_with_another_config_names_what_differs_and_is_not_retried(tmp_path: Path) -> None:
    from dialsum.config import load_model_config
    from dialsum.data.source import run_identity
    from dialsum.state import runs
    from dialsum.storage import publish

    store = LocalStorage(tmp_path / "store")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}", encoding="utf-8")
    published = load_model_config("tiny-bart", ["training.learning_rate=0.01"])
    publish(tmp_path / "run", "r1", "tiny-bart", storage=store, extra=run_identity(published, None, True))
    assert runs.published("r1", published, None, True, store) == {}
    with pytest.raises(
        ConfigError, match="with another config \\(profile and overrides\\); continue it with --resume r1 alone"
    ):
        runs.published("r1", load_model_config("tiny-bart"), None, True, store)


def test_one_command_opens_its_storage_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dialsum import storage
    from dialsum.state.runs import state_dir

    _started(tmp_path / "store", "--models", "tiny-bart", "--run-id", "once-1", "--debug")
    state_dir("once-1", "tiny-bart").mkdir(parents=True)
    (state_dir("once-1", "tiny-bart") / "run.json").write_text("{}")  # something to continue
    opened = []
    real = storage.open_storage
    monkeypatch.setattr(storage, "open_storage", lambda url=None: opened.append(url) or real(url))
    parsed = _resumed(tmp_path / "store", "train", "--resume", "once-1")  # reads the run's record
    parsed.run_id = parsed.resume
    with checks.leases(parsed, checks.training(parsed)):  # checks it can continue, then holds its lease
        assert isinstance(checks.opened_storage(parsed), LocalStorage)
    assert opened == [str(tmp_path / "store")]
