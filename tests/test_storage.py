"""Artifact storage: local folders and S3 (a real moto_server over HTTP), publish/list/fetch and faults."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import boto3
import pytest
from s3_server import s3_client, start_moto, use_endpoint

from dialsum import storage_cli
from dialsum.errors import StorageError
from dialsum.settings import get_settings
from dialsum.storage import (
    MANIFEST,
    FileDigest,
    LocalStorage,
    S3Storage,
    Storage,
    check_relpath,
    digest_file,
    fetch,
    list_runs,
    open_storage,
    publish,
    read_manifest,
)

RUN_FILES = {
    "adapter_config.json": b'{"r": 16, "lora_alpha": 32}',
    "adapter_model.safetensors": os.urandom(3 * 1024 * 1024),
    "tokenizer.json": '{"model": "한국어 토크나이저"}'.encode(),
    "tokenizer_config.json": b"{}",
    "predictions/dev.csv": "fname,summary\ndev_0,요약입니다\n".encode(),
    "predictions/test.csv": "fname,summary\ntest_0,요약\n".encode(),
    "metrics.json": b'{"rouge": 0.42}',
    "config.yaml": b"model: kobart\n",
}


def make_run(folder: Path, files: dict[str, bytes] = RUN_FILES) -> Path:
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def read_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


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
    assert [(r.run_id, r.model) for r in list_runs(storage)] == [("20250101-1200", "ensemble"), ("20250101-1200", "kobart")]
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


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a\\b", "a//b", "", "a/../b", "./a", "a/", "bad name", "ü.txt"])
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
        publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=LocalStorage(tmp_path / "s"), extra={"x": object()})
    assert not (tmp_path / "s").exists()


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


def test_git_commit_is_null_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIALSUM_GIT_COMMIT", raising=False)
    monkeypatch.chdir(tmp_path)
    result = publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=LocalStorage(tmp_path / "s"))
    assert result.manifest["git_commit"] is None


def test_secrets_never_appear(s3_bucket: str, monkeypatch: pytest.MonkeyPatch, caplog, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDsecretid12345")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-v4lue-xyz")
    get_settings.cache_clear()
    caplog.set_level("DEBUG", logger="dialsum")
    storage = open_storage(f"s3://{s3_bucket}/team")
    result = publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=storage)
    shown = " ".join([repr(storage), str(storage), repr(get_settings()), str(get_settings()), repr(result), caplog.text])
    assert "AKIDsecretid12345" not in shown and "s3cr3t-v4lue-xyz" not in shown
    assert s3_bucket in repr(storage)


# ---------------------------------------------------------------- S3 specifics and faults


@pytest.mark.slow
def test_large_file_is_uploaded_multipart_and_verifies(s3_bucket: str, moto_server, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", {"adapter_config.json": b"{}"})
    size = 200 * 1024 * 1024 + 12345
    with open(run / "adapter_model.safetensors", "wb") as handle:
        for _ in range(25):
            handle.write(os.urandom(8 * 1024 * 1024))
        handle.write(os.urandom(12345))
    storage = open_storage(f"s3://{s3_bucket}/team")
    publish(run, "big", "qwen", storage=storage)

    head = s3_client(moto_server.endpoint).head_object(Bucket=s3_bucket, Key="team/big/qwen/adapter_model.safetensors")
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith("-13")
    dest = fetch("big", "qwen", tmp_path / "out", storage)
    assert (dest / "adapter_model.safetensors").stat().st_size == size
    for path in (run / "adapter_model.safetensors", dest / "adapter_model.safetensors"):
        path.unlink()


@pytest.fixture
def own_server(monkeypatch: pytest.MonkeyPatch):
    server = start_moto()
    use_endpoint(monkeypatch, server.endpoint)
    yield server
    server.stop()
    get_settings.cache_clear()


def test_server_stopped_mid_upload_then_retry_succeeds(own_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", RUN_FILES | {"adapter_model.safetensors": os.urandom(40 * 1024 * 1024)})
    s3_client(own_server.endpoint).create_bucket(Bucket="runs")
    written: list[str] = []
    monkeypatch.setattr(S3Storage, "write_bytes", lambda self, key, data: written.append(key))

    session = boto3.Session()
    session.events.register("before-send.s3.UploadPart", lambda **_: own_server.stop())
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot upload s3://runs/team/run-1/kobart/adapter_model.safetensors"):
        publish(run, "run-1", "kobart", storage=open_storage("s3://runs/team"))
    assert time.monotonic() - started < 30
    assert written == []

    monkeypatch.undo()
    server = start_moto(own_server.port)
    own_server.process = server.process
    use_endpoint(monkeypatch, server.endpoint)
    s3_client(server.endpoint).create_bucket(Bucket="runs")
    storage = open_storage("s3://runs/team")
    assert read_manifest("run-1", "kobart", storage) is None
    result = publish(run, "run-1", "kobart", storage=storage)
    assert result.uploaded == len(RUN_FILES)
    assert read_tree(fetch("run-1", "kobart", tmp_path / "out", storage)).keys() == {*RUN_FILES, MANIFEST}


def test_dead_server_fails_fast_with_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_moto()
    server.stop()
    use_endpoint(monkeypatch, server.endpoint)
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot read s3://bucket/run-1/kobart/manifest.json"):
        publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=open_storage("s3://bucket"))
    assert time.monotonic() - started < 15
    get_settings.cache_clear()


# ---------------------------------------------------------------- CLI


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dialsum")
    storage_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_ls_and_get(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=LocalStorage(store))
    publish(make_run(tmp_path / "run"), "run-1", "ensemble", storage=LocalStorage(store))

    assert run_cli("artifacts", "ls", str(store)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].split()[:5] == ["run-1", "kobart", "8", "files", "3.0"]

    assert run_cli("artifacts", "get", "run-1", "kobart", str(tmp_path / "dest"), "--storage", str(store)) == 0
    assert "8 files" in capsys.readouterr().out
    assert read_tree(tmp_path / "dest").keys() == {*RUN_FILES, MANIFEST}

    assert run_cli("artifacts", "ls", str(tmp_path / "empty")) == 0
    assert "no published runs" in capsys.readouterr().out



@pytest.mark.parametrize("size", [1000, 20 * 1024 * 1024], ids=["single-part", "multipart"])
def test_file_changed_after_hashing_fails_verification(storage: Storage, size: int, tmp_path: Path, monkeypatch) -> None:
    run = make_run(tmp_path / "run", {"adapter_model.safetensors": os.urandom(size)})

    def digest_then_change(path: Path) -> FileDigest:
        digest = digest_file(path)
        with open(path, "r+b") as handle:
            handle.write(b"changed!")
        return digest

    monkeypatch.setattr("dialsum.storage.digest_file", digest_then_change)
    with pytest.raises(StorageError, match="adapter_model.safetensors failed verification"):
        publish(run, "run-1", "kobart", storage=storage)
    assert read_manifest("run-1", "kobart", storage) is None


@pytest.mark.parametrize("prefix", ["runs", "team/nightly", ""])
def test_storage_prefix_is_used_as_given(s3_bucket: str, tmp_path: Path, prefix: str) -> None:
    url = f"s3://{s3_bucket}/{prefix}".rstrip("/")
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=open_storage(url))
    keys = [o["Key"] for o in s3_client(get_settings().s3_endpoint_url).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    expected = f"{prefix}/run-1/kobart/{MANIFEST}".lstrip("/")
    assert expected in keys and all(k.startswith(expected.removesuffix(MANIFEST)) for k in keys)
    assert [(r.run_id, r.model) for r in list_runs(open_storage(url))] == [("run-1", "kobart")]


def test_local_storage_folder_is_the_runs_root(tmp_path: Path) -> None:
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=open_storage(str(tmp_path / "artifacts")))
    assert (tmp_path / "artifacts" / "run-1" / "kobart" / MANIFEST).is_file()
    assert not (tmp_path / "artifacts" / "runs").exists()
