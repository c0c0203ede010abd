"""What a person sees: each line once and above the progress bars, no third-party chatter by default, fast config
errors with suggestions, a version, shell completion. (Each line once in a whole multi-model run:
cli/test_interrupt.py.)"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from dialsum import console


def run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI; returns the result and the CPU seconds (user + system) the child used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_seconds(code: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_a_yaml_typo_is_reported_with_a_suggestion_well_before_torch_could_load(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("type: encoder_decoder\nmodel: tiny-bart\ntraining:\n  learnig_rate: 0.001\n", encoding="utf-8")
    proc, spent = run_cli(["train", "--models", str(typo), "--debug"])
    torch_import = cpu_seconds("import torch")

    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "training.learnig_rate: Extra inputs are not permitted; did you mean `learning_rate`?" in proc.stderr
    assert spent < 0.5 * torch_import, (
        f"typo reported after {spent:.2f} CPU s; importing torch takes {torch_import:.2f}"
    )


def test_an_unknown_model_suggests_the_closest_and_imports_neither_torch_nor_prefect() -> None:
    code = (
        "import sys; from dialsum.cli.main import main; rc = main(['train', '--models', 'tiny-brat']); "
        "print(rc, 'torch' in sys.modules, 'prefect' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"]
    assert "unknown model 'tiny-brat'; did you mean `tiny-bart`?" in proc.stderr


def test_default_verbosity_quiets_third_parties_and_verbose_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in console.QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    console.configure(verbose=True)
    assert not any(name in os.environ for name in console.QUIET_ENV)
    console.configure(verbose=False)
    assert all(os.environ[name] == value for name, value in console.QUIET_ENV.items())
    import logging

    record = logging.LogRecord(
        "bitsandbytes.backends.cpu.ops",
        logging.WARNING,
        __file__,
        1,
        "Failed to load CPU gemm_4bit_forward from kernels-community: %s",
        ("x",),
        None,
    )
    assert not logging.getLogger("bitsandbytes.backends.cpu.ops").filter(record)


def test_a_child_flow_run_process_never_prints_the_bitsandbytes_kernels_hint() -> None:
    code = (
        "import logging; from dialsum.orchestration.logs import send_to_prefect; send_to_prefect(); "
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning("
        "'Failed to load CPU gemm_4bit_forward from kernels-community: %s', 'x'); "
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another warning')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "gemm_4bit_forward" not in proc.stderr and "another warning" in proc.stderr


def test_quiet_affects_console_handlers_only_and_telemetry_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*console.QUIET_ENV, *console.ALWAYS_ENV, "PREFECT_LOGGING_LEVEL"]:
        monkeypatch.delenv(name, raising=False)
    console.configure(verbose=False)
    assert os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "WARNING"
    assert "PREFECT_LOGGING_LEVEL" not in os.environ  # Prefect's loggers (and its API handler) stay at INFO
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_log_lines_go_above_the_progress_bar_which_names_the_model() -> None:
    import io
    import logging

    from tqdm import tqdm

    stream = io.StringIO()
    handler = console.AboveProgressBars(stream)
    handler.setFormatter(logging.Formatter(console.FORMAT))
    with console.model_position(2, 3):
        label = console.bar_label("tiny-llama", "train")
    assert label == "tiny-llama train (model 2 of 3)" and console.bar_label("kobart", "dev") == "kobart dev"
    with tqdm(total=10, desc=label, file=stream, mininterval=0, ascii=True) as bar:
        bar.update(3)
        handler.emit(logging.LogRecord("dialsum.x", logging.INFO, __file__, 1, "eval at step 3", (), None))
        bar.update(1)
    rows = [row for row in re.split(r"[\r\n]", stream.getvalue()) if row.strip()]
    assert "INFO dialsum.x: eval at step 3" in rows  # a line of its own, not glued to the bar
    assert all(row.startswith("tiny-llama train (model 2 of 3)") or row.startswith("INFO") for row in rows), rows


def test_the_console_handler_follows_stderr_and_never_writes_to_a_closed_stream() -> None:
    """Two runs in one process (tests call `main` in-process) each with their own, later closed, sys.stderr."""
    import contextlib
    import io
    import logging

    handler = console.AboveProgressBars()
    handler.setFormatter(logging.Formatter(console.FORMAT))
    record = logging.LogRecord("dialsum.x", logging.INFO, __file__, 1, "published r1/tiny-bart", (), None)
    first, second = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(first):
        handler.handle(record)
    first.close()
    with contextlib.redirect_stderr(second):
        handler.handle(record)
    assert second.getvalue() == "INFO dialsum.x: published r1/tiny-bart\n"


def test_version_and_shell_completion() -> None:
    from importlib import metadata

    version = subprocess.run([sys.executable, "-m", "dialsum.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"dialsum {metadata.version('dialsum')}"
    script = subprocess.run([sys.executable, "-m", "dialsum.cli", "completion", "bash"], capture_output=True, text=True)
    assert script.returncode == 0 and "complete" in script.stdout and "_dialsum_models" in script.stdout
    assert "--resume" in script.stdout and "preflight" in script.stdout
