"""One writer per run and model, a crash relaunch, and an idempotent resume, as a user runs them: from a folder
outside the repository, with the shipped profiles and the default ./outputs and ./artifacts."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def env_outside_repo() -> dict[str, str]:
    """No DIALSUM_CONFIG_DIR, output or storage settings: the package's profiles, ./outputs and ./artifacts."""
    keep = {"DIALSUM_CACHE_DIR"}  # the session's tiny models, built once
    return {k: v for k, v in os.environ.items() if not k.startswith("DIALSUM_") or k in keep}


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dialsum.cli", *args],
            cwd=cwd,
            env=env_outside_repo(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path, with its sha256; folders too (as '/')."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(folder.rglob("*"))
    }


def wait_for(condition, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the awaited moment"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_one_writer_a_killed_holder_and_an_idempotent_resume(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    train = ["train", "--models", "tiny-bart", "--debug", "--run-id", "r1"]

    # Two starts with one run id: exactly one trains; the other stops at once, naming the holder.
    started = time.monotonic()
    first, second = start(train, cwd, tmp_path / "a.log"), start(train, cwd, tmp_path / "b.log")
    while first.poll() is None and second.poll() is None:
        time.sleep(0.05)
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    lost_after = time.monotonic() - started
    loser_log = (tmp_path / ("a.log" if loser is first else "b.log")).read_text()
    assert loser.returncode == 2 and lost_after < 5, loser_log
    assert f"run r1/tiny-bart is being trained by pid {winner.pid} on host" in loser_log
    assert "Traceback" not in loser_log

    # The winner is killed once its first checkpoint is published; the relaunch takes its lease over and resumes.
    checkpoints = cwd / "artifacts" / "r1" / "tiny-bart" / "checkpoints"
    wait_for(lambda: any(checkpoints.glob("step-*/manifest.json")), winner, 300)
    winner.send_signal(signal.SIGKILL)
    winner.wait()
    assert (cwd / "artifacts" / "r1" / "tiny-bart" / "lease.json").is_file()
    relaunch = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", *train],
        cwd=cwd,
        env=env_outside_repo(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = relaunch.stdout + relaunch.stderr
    assert relaunch.returncode == 0, output[-3000:]
    assert f"took over the lease of pid {winner.pid}" in output
    assert re.search(r"resumed tiny-bart at step [12] ", output), output[-3000:]
    assert not (cwd / "artifacts" / "r1" / "tiny-bart" / "lease.json").exists()

    # Resuming the finished run changes no byte, locally or in storage.
    before = tree(cwd)
    resume = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "train", "--models", "tiny-bart", "--debug", "--resume", "r1"],
        cwd=cwd,
        env=env_outside_repo(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert "already complete" in resume.stdout and "already complete" in resume.stderr
    assert tree(cwd) == before


def test_models_lists_the_shipped_profiles_from_any_folder(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "models"],
        cwd=tmp_path,
        env=env_outside_repo(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:]}
    assert rows["kobart"] == "encoder_decoder" and rows["qwen3-4b"] == "causal_lm" and "tiny-bart" in rows
    assert "QLoRA: nf4 4-bit base, LoRA r16/alpha 32 on 7 modules" in proc.stdout
    assert list(tmp_path.iterdir()) == []
