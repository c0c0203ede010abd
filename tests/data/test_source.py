"""Data from storage URLs (a local folder and a real S3 endpoint) and the fingerprints runs record."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.s3_server import s3_client

from dialsum.data import sample_dir
from dialsum.data import source as datasource
from dialsum.errors import DataError
from dialsum.settings import get_settings


def copy_sample(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for path in sample_dir().glob("*.csv"):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_a_folder_url_is_fetched_into_the_cache_by_hash(tmp_path: Path) -> None:
    source = copy_sample(tmp_path / "incoming")
    fetched = datasource.resolve(source.as_uri())
    assert fetched.parent == get_settings().cache_dir / "data"
    assert fetched.name == datasource.data_fingerprint(source) == datasource.data_fingerprint(None)
    assert sorted(p.name for p in fetched.iterdir()) == ["dev.csv", "test.csv", "train.csv"]
    assert datasource.resolve(source.as_uri()) == fetched  # same bytes, same folder

    (source / "dev.csv").write_bytes((source / "dev.csv").read_bytes().replace(b"#Person1#", b"#Person2#", 1))
    changed = datasource.resolve(source.as_uri())
    assert changed != fetched and datasource.dev_fingerprint(changed) != datasource.dev_fingerprint(fetched)
    assert datasource.resolve(source) == source  # a plain folder is used in place


def test_an_s3_url_is_fetched_and_fingerprinted(s3_bucket: str, moto_server, tmp_path: Path) -> None:
    client = s3_client(moto_server.endpoint)
    for path in sample_dir().glob("*.csv"):
        client.put_object(Bucket=s3_bucket, Key=f"nightly/data/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket=s3_bucket, Key="nightly/data/old/train.csv", Body=b"ignored")
    fetched = datasource.resolve(f"s3://{s3_bucket}/nightly/data")
    assert fetched.name == datasource.data_fingerprint(None)
    with pytest.raises(DataError, match="no train.csv or dev.csv"):
        datasource.resolve(f"s3://{s3_bucket}/elsewhere")


def test_code_and_config_fingerprints_follow_their_inputs() -> None:
    from dialsum.config import load_model_config

    bart, llama = load_model_config("tiny-bart"), load_model_config("tiny-llama")
    assert datasource.config_fingerprint(bart) == datasource.config_fingerprint(load_model_config("tiny-bart"))
    assert datasource.config_fingerprint(bart) != datasource.config_fingerprint(llama)
    assert len(datasource.code_fingerprint()) == 64
    files = datasource.code_files()  # every subpackage counts, wherever this module sits
    assert {"pipeline/run.py", "engine/trainer.py", "models/causal_lm.py", "cli/main.py", "storage/s3.py"} <= set(files)
