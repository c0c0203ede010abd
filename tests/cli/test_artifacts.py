"""`dialsum artifacts ls` and `get` (`cli.artifacts`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from support.run_folders import RUN_FILES, make_run, read_tree

from dialsum.cli import artifacts
from dialsum.storage import MANIFEST, LocalStorage, publish, publish_checkpoint


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dialsum")
    artifacts.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_ls_and_get(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=LocalStorage(store))
    publish(make_run(tmp_path / "run"), "run-1", "ensemble", storage=LocalStorage(store))

    checkpoint = tmp_path / "step"
    checkpoint.mkdir()
    (checkpoint / "trainer.pt").write_bytes(b"x" * 1024 * 1024)
    publish_checkpoint(checkpoint, "run-1", "kobart", "step-00000002", LocalStorage(store))

    assert run_cli("artifacts", "ls", str(store)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["run", "model", "files", "size", "checkpoints", "total", "created"]
    assert lines[1].split()[:7] == ["run-1", "ensemble", "8", "3.0", "MB", "-", "3.0"]
    assert lines[2].split()[:9] == ["run-1", "kobart", "8", "3.0", "MB", "1", "(1.0", "MB)", "4.0"]
    assert lines[2].index(" 1 (1.0 MB)") + 1 == lines[0].index("checkpoints")

    assert run_cli("artifacts", "get", "run-1", "kobart", str(tmp_path / "dest"), "--storage", str(store)) == 0
    assert "8 files" in capsys.readouterr().out
    assert read_tree(tmp_path / "dest").keys() == {*RUN_FILES, MANIFEST}

    assert run_cli("artifacts", "ls", str(tmp_path / "empty")) == 0
    assert "no published runs" in capsys.readouterr().out
