"""Choosing a backend by URL (`open_storage`) and the local backend (`storage.local`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.run_folders import make_run

from dialsum.errors import StorageError
from dialsum.settings import get_settings
from dialsum.storage import MANIFEST, open_storage, publish
from dialsum.storage.s3 import S3Storage


def test_storage_url_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIALSUM_STORAGE_URL", raising=False)
    get_settings.cache_clear()
    assert open_storage().url == str(tmp_path / "artifacts")
    assert open_storage(f"file://{tmp_path}/a b").url == str(tmp_path / "a b")
    monkeypatch.setenv("DIALSUM_STORAGE_URL", "s3://bucket/some/prefix/")
    get_settings.cache_clear()
    s3 = open_storage()
    assert isinstance(s3, S3Storage) and s3.url == "s3://bucket/some/prefix"
    assert s3.location("runs/r/m/x") == "s3://bucket/some/prefix/runs/r/m/x"
    with pytest.raises(StorageError, match="unsupported storage URL"):
        open_storage("gs://bucket/x")
    get_settings.cache_clear()


def test_local_storage_folder_is_the_runs_root(tmp_path: Path) -> None:
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=open_storage(str(tmp_path / "artifacts")))
    assert (tmp_path / "artifacts" / "run-1" / "kobart" / MANIFEST).is_file()
    assert not (tmp_path / "artifacts" / "runs").exists()


def test_write_json_replaces_the_file_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    import json

    from dialsum.storage.local import write_json

    path = tmp_path / "fit.json"
    write_json(path, {"step": 1})
    write_json(path, {"step": 2, "note": "요약"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"step": 2, "note": "요약"}
    assert [p.name for p in tmp_path.iterdir()] == ["fit.json"]
