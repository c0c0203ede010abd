"""Published run folders (`storage.manifest`) on local folders and S3 (a real moto_server over HTTP): publish, list,
fetch, verification and names."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from support.run_folders import RUN_FILES, make_run, read_tree
from support.s3_server import s3_client

from dialsum.errors import StorageError
from dialsum.settings import get_settings
from dialsum.storage import (
    MANIFEST,
    LocalStorage,
    Storage,
    fetch,
    list_runs,
    open_storage,
    publish,
    read_manifest,
)
from dialsum.storage.base import FileDigest, check_relpath, digest_file
from dialsum.storage.s3 import S3Storage


def tamper(storage: Storage, key: str, data: bytes) -> None:
    """Overwrite a stored object behind publish's back."""
    if isinstance(storage, S3Storage):
        bucket, _, name = storage.location(key).removeprefix("s3://").partition("/")
        s3_client(get_settings().s3_endpoint_url).put_object(Bucket=bucket, Key=name, Body=data)
    else:
        Path(storage.location(key)).write_bytes(data)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "store"))
    return open_storage(f"s3://{request.getfixturevalue('s3_bucket')}/team")


# ---------------------------------------------------------------- round trips


def test_publish_list_fetch_round_trip(storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALSUM_GIT_COMMIT", "abc123")
    get_settings.cache_clear()
    run = make_run(tmp_path / "run")
    result = publish(run, "20250101-1200", "kobart", storage=storage, extra={"config_hash": "c1"})
    publish(run, "20250101-1200", "ensemble", storage=storage)

    manifest = result.manifest
    assert (result.uploaded, result.skipped) == (len(RUN_FILES), False)
    assert result.url == storage.location("20250101-1200/kobart/")
    assert manifest["run_id"] == "20250101-1200" and manifest["model"] == "kobart"
    assert manifest["extra"] == {"config_hash": "c1"} and manifest["git_commit"] == "abc123"
    assert "dialsum" in manifest["versions"] and manifest["created_at"]
    assert {e["path"]: (e["sha256"], e["size"]) for e in manifest["files"]} == {
        rel: (hashlib.sha256(data).hexdigest(), len(data)) for rel, data in RUN_FILES.items()
    }
    assert sorted(storage.list_keys("20250101-1200/kobart/")) == sorted(
        f"20250101-1200/kobart/{rel}" for rel in [*RUN_FILES, MANIFEST]
    )
    assert [(r.run_id, r.model) for r in list_runs(storage)] == [
        ("20250101-1200", "ensemble"),
        ("20250101-1200", "kobart"),
    ]
    assert read_manifest("20250101-1200", "kobart", storage) == manifest

    dest = fetch("20250101-1200", "kobart", tmp_path / "out" / "kobart", storage)
    fetched = read_tree(dest)
    assert json.loads(fetched.pop(MANIFEST)) == manifest
    assert fetched == RUN_FILES


def test_folders_without_manifest_are_ignored(storage: Storage, tmp_path: Path) -> None:
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=storage)
    storage.write_bytes("run-2/kobart/adapter_config.json", b"{}")
    assert [(r.run_id, r.model) for r in list_runs(storage)] == [("run-1", "kobart")]
    assert read_manifest("run-2", "kobart", storage) is None
    with pytest.raises(StorageError, match="not published"):
        fetch("run-2", "kobart", tmp_path / "dest", storage)


def test_republishing_identical_files_is_a_noop(storage: Storage, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    first = publish(run, "run-1", "kobart", storage=storage)
    second = publish(run, "run-1", "kobart", storage=storage, extra={"note": "again"})
    assert (second.uploaded, second.skipped) == (0, True)
    assert second.manifest == first.manifest


def test_different_content_is_refused_unless_forced(storage: Storage, tmp_path: Path) -> None:
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=storage)
    changed = {k: v for k, v in RUN_FILES.items() if k != "config.yaml"} | {"metrics.json": b'{"rouge": 0.5}'}
    run2 = make_run(tmp_path / "run2", changed)

    with pytest.raises(StorageError, match="already published .* different files"):
        publish(run2, "run-1", "kobart", storage=storage)
    assert read_tree(fetch("run-1", "kobart", tmp_path / "old", storage))["metrics.json"] == b'{"rouge": 0.42}'

    result = publish(run2, "run-1", "kobart", storage=storage, force=True)
    assert (result.uploaded, result.skipped) == (len(changed), False)
    fetched = read_tree(fetch("run-1", "kobart", tmp_path / "new", storage))
    fetched.pop(MANIFEST)
    assert fetched == changed
    assert "run-1/kobart/config.yaml" not in set(storage.list_keys(""))


def test_tampered_object_fails_fetch_and_leaves_nothing(storage: Storage, tmp_path: Path) -> None:
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=storage)
    tamper(storage, "run-1/kobart/predictions/dev.csv", b"fname,summary\ndev_0,forged\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StorageError, match="checksum mismatch for predictions/dev.csv"):
        fetch("run-1", "kobart", out / "kobart", storage)
    assert list(out.iterdir()) == []


def test_fetch_refuses_a_non_empty_destination(storage: Storage, tmp_path: Path) -> None:
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=storage)
    dest = make_run(tmp_path / "dest", {"keep.txt": b"mine"})
    with pytest.raises(StorageError, match="not an empty folder"):
        fetch("run-1", "kobart", dest, storage)
    assert read_tree(dest) == {"keep.txt": b"mine"}


def test_manifest_with_escaping_path_is_rejected(storage: Storage, tmp_path: Path) -> None:
    manifest = {"run_id": "run-1", "model": "kobart", "files": [{"path": "../../evil", "sha256": "0" * 64, "size": 1}]}
    storage.write_bytes(f"run-1/kobart/{MANIFEST}", json.dumps(manifest).encode())
    with pytest.raises(StorageError, match="malformed manifest.*invalid file path"):
        fetch("run-1", "kobart", tmp_path / "out" / "x", storage)
    assert not (tmp_path / "evil").exists()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "UPPER", "", "-x", "a b", "x" * 65])
def test_invalid_run_and_model_names_are_rejected(name: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    run = make_run(tmp_path / "run")
    with pytest.raises(StorageError, match="invalid run id"):
        publish(run, name, "kobart", storage=storage)
    with pytest.raises(StorageError, match="invalid model name"):
        publish(run, "run-1", name, storage=storage)
    with pytest.raises(StorageError, match="invalid"):
        fetch(name, "kobart", tmp_path / "out", storage)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a\\b", "a//b", "", "a/../b", "./a", "a/", "bad name", "ü.txt"]
)
def test_invalid_relative_paths_are_rejected(path: str) -> None:
    with pytest.raises(StorageError, match="invalid file path"):
        check_relpath(path)


def test_valid_relative_paths_pass() -> None:
    for path in ["predictions/dev.csv", "adapter_model.safetensors", ".hidden", "checkpoint-500/optimizer.pt"]:
        assert check_relpath(path) == path


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_symlinks_in_run_folder_are_rejected(kind: str, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    target = Path("/etc/passwd") if kind == "file" else Path("/etc")
    (run / "leak").symlink_to(target)
    with pytest.raises(StorageError, match="no symlinks"):
        publish(run, "run-1", "kobart", storage=LocalStorage(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_odd_file_names_in_run_folder_are_rejected(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", {"bad name.json": b"{}"})
    with pytest.raises(StorageError, match="invalid file path 'bad name.json'"):
        publish(run, "run-1", "kobart", storage=LocalStorage(tmp_path / "store"))


def test_unserialisable_extra_is_refused_before_upload(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="JSON"):
        publish(
            make_run(tmp_path / "run"), "run-1", "kobart", storage=LocalStorage(tmp_path / "s"), extra={"x": object()}
        )
    assert not (tmp_path / "s").exists()


def test_git_commit_is_null_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIALSUM_GIT_COMMIT", raising=False)
    monkeypatch.chdir(tmp_path)
    result = publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=LocalStorage(tmp_path / "s"))
    assert result.manifest["git_commit"] is None


# ---------------------------------------------------------------- S3 specifics and faults


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("size", [1000, 20 * 1024 * 1024], ids=["single-part", "multipart"])
def test_file_changed_after_hashing_fails_verification(
    storage: Storage, size: int, tmp_path: Path, monkeypatch
) -> None:
    run = make_run(tmp_path / "run", {"adapter_model.safetensors": os.urandom(size)})

    def digest_then_change(path: Path) -> FileDigest:
        digest = digest_file(path)
        with open(path, "r+b") as handle:
            handle.write(b"changed!")
        return digest

    monkeypatch.setattr("dialsum.storage.manifest.digest_file", digest_then_change)
    with pytest.raises(StorageError, match="adapter_model.safetensors failed verification"):
        publish(run, "run-1", "kobart", storage=storage)
    assert read_manifest("run-1", "kobart", storage) is None
