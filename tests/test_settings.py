"""Settings: defaults and the writable-folder check that turns permission problems into one clear error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.as_user import NOBODY, call_as

from dialsum.cli import main as cli
from dialsum.errors import FolderError
from dialsum.settings import Settings, get_settings, writable_dir


def locked_folder(tmp_path: Path) -> Path:
    """A folder only its owner may write, owned by someone other than the user the check runs as."""
    folder = tmp_path / "outputs"
    folder.mkdir()
    if os.getuid() == 0:
        os.chown(folder, 0, 0)
    folder.chmod(0o755)
    tmp_path.chmod(0o755)
    return folder


def test_unwritable_output_folder_is_one_clear_error(tmp_path: Path) -> None:
    folder = locked_folder(tmp_path)
    uid = NOBODY if os.getuid() == 0 else os.getuid()
    if uid == os.getuid():
        folder.chmod(0o555)
    status, exc = call_as(uid, lambda: writable_dir(folder / "run", "output"))
    assert status == "error" and isinstance(exc, FolderError), exc
    message = str(exc)
    assert str(folder / "run") in message and f"uid {uid}" in message and "chown" in message
    assert "\n" not in message


def test_writable_dir_creates_the_folder(tmp_path: Path) -> None:
    assert writable_dir(tmp_path / "a" / "b", "cache").is_dir()


def test_a_file_in_the_way_is_a_folder_error(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(FolderError, match=r"cache folder .*cache"):
        writable_dir(tmp_path / "cache", "cache")


def test_cli_train_with_unwritable_cache_exits_2_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("DIALSUM_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    assert cli.main(["train", "--models", "tiny-bart", "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dialsum: error: cannot write to the cache folder") and "Traceback" not in err
    assert not list(Path(os.environ["DIALSUM_OUTPUT_DIR"]).glob("*/.tiny-bart.partial"))


def test_git_commit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALSUM_GIT_COMMIT", "0123abc")
    assert Settings().git_commit == "0123abc"
