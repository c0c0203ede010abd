"""The S3 backend (`storage.s3`) on a real moto_server: secrets, multipart uploads, prefixes and server faults."""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
import pytest
from support.run_folders import RUN_FILES, make_run, read_tree
from support.s3_server import s3_client, start_moto, use_endpoint

from dialsum.errors import StorageError
from dialsum.settings import get_settings
from dialsum.storage import (
    MANIFEST,
    fetch,
    list_runs,
    open_storage,
    publish,
    read_manifest,
)
from dialsum.storage.s3 import S3Storage


def test_secrets_never_appear(s3_bucket: str, monkeypatch: pytest.MonkeyPatch, caplog, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDsecretid12345")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-v4lue-xyz")
    get_settings.cache_clear()
    caplog.set_level("DEBUG", logger="dialsum")
    storage = open_storage(f"s3://{s3_bucket}/team")
    result = publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=storage)
    shown = " ".join(
        [repr(storage), str(storage), repr(get_settings()), str(get_settings()), repr(result), caplog.text]
    )
    assert "AKIDsecretid12345" not in shown and "s3cr3t-v4lue-xyz" not in shown
    assert s3_bucket in repr(storage)


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


def test_server_stopped_mid_upload_then_retry_succeeds(
    own_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
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


@pytest.mark.parametrize("prefix", ["runs", "team/nightly", ""])
def test_storage_prefix_is_used_as_given(s3_bucket: str, tmp_path: Path, prefix: str) -> None:
    url = f"s3://{s3_bucket}/{prefix}".rstrip("/")
    publish(make_run(tmp_path / "run"), "run-1", "kobart", storage=open_storage(url))
    keys = [o["Key"] for o in s3_client(get_settings().s3_endpoint_url).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    expected = f"{prefix}/run-1/kobart/{MANIFEST}".lstrip("/")
    assert expected in keys and all(k.startswith(expected.removesuffix(MANIFEST)) for k in keys)
    assert [(r.run_id, r.model) for r in list_runs(open_storage(url))] == [("run-1", "kobart")]
