"""What a person sees: each line once, no third-party chatter by default, fast config errors with suggestions."""

from __future__ import annotations

import collections
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from dialsum import console

PREFECT_PREFIX = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| *\w+ *\| [^-]+ - ")
OUR_PREFIX = re.compile(r"^(DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI; returns the result and the CPU seconds (user + system) the child used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "dialsum.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
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
    assert spent < 0.5 * torch_import, f"typo reported after {spent:.2f} CPU s; importing torch takes {torch_import:.2f}"


def test_an_unknown_model_suggests_the_closest_and_imports_neither_torch_nor_prefect() -> None:
    code = ("import sys; from dialsum.cli.main import main; rc = main(['train', '--models', 'tiny-brat']); "
            "print(rc, 'torch' in sys.modules, 'prefect' in sys.modules)")
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

    record = logging.LogRecord("bitsandbytes.backends.cpu.ops", logging.WARNING, __file__, 1,
                               "Failed to load CPU gemm_4bit_forward from kernels-community: %s", ("x",), None)
    assert not logging.getLogger("bitsandbytes.backends.cpu.ops").filter(record)


def message(line: str) -> str:
    return OUR_PREFIX.sub("", PREFECT_PREFIX.sub("", line)).strip()


@pytest.mark.slow
def test_demo_like_output_has_each_line_once_and_no_progress_bars(tmp_path: Path) -> None:
    env = {"DIALSUM_OUTPUT_DIR": str(tmp_path / "out"), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    proc, _ = run_cli(["train", "--mode", "multi_model", "--models", "tiny-bart", "tiny-llama", "--debug",
                       "--storage", str(tmp_path / "store"), "--promote", "if-better"], env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    lines = [line for line in output.splitlines() if line.strip()]
    counts = collections.Counter(message(line) for line in lines)
    assert [m for m, n in counts.items() if n > 1] == [], output
    for noise in ("Loading weights", "Writing model shards", "wandb:", "kernels-community"):
        assert noise not in output, noise
    table_at = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert table_at <= 20, "\n".join(lines[:table_at])
    assert "champion: promoted: no champion yet" in output
