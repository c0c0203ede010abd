"""`--data` given as a storage URL: it stays a URL on every command, a URL that cannot be read is one error line,
and `train-all` and `sweep` train on data fetched from S3 (the suite's moto_server)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.s3_server import s3_client

from dialsum.cli.main import build_parser, main
from dialsum.data import sample_dir
from dialsum.data.source import data_fingerprint

ROOT = Path(__file__).resolve().parents[2]
URL = "s3://team-data/nightly/data"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--models", "tiny-bart"],
        ["train-all", "--models", "tiny-bart"],
        ["sweep", "--models", "tiny-bart"],
        ["kfold", "--models", "tiny-bart"],
        ["predict", "--run", "x"],
        ["preflight", "--models", "tiny-bart"],
        ["tune-decoding", "--run", "x"],
    ],
)
def test_a_data_url_stays_a_url(argv: list[str]) -> None:
    assert build_parser().parse_args([*argv, "--data", URL]).data == URL
    assert build_parser().parse_args([*argv, "--data", "file:///srv/data"]).data == "file:///srv/data"
    assert build_parser().parse_args([*argv, "--data", "some/folder"]).data == Path("some/folder")


def small_data(folder: Path, rows: dict[str, int]) -> Path:
    """The first rows of each split of the bundled sample."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in rows.items():
        with open(sample_dir() / f"{split}.csv", encoding="utf-8") as handle:
            kept = list(csv.DictReader(handle))[:n]
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(kept[0]))
            writer.writeheader()
            writer.writerows(kept)
    return folder


def upload(folder: Path, bucket: str, prefix: str, endpoint: str) -> str:
    for path in folder.iterdir():
        s3_client(endpoint).upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}"


def error_line(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dialsum: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "command",
    [
        ["train-all"],
        ["train"],
        ["sweep", "--trials", "1", "--space", str(ROOT / "configs/sweeps/tiny-bart.yaml")],
        ["kfold"],
    ],
)
def test_a_data_url_that_cannot_be_read_is_one_line(
    command: list[str], s3_bucket: str, moto_server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [*command, "--models", "tiny-bart", "--debug", "--storage", str(tmp_path / "store"), "--data"]
    assert "NoSuchBucket" in error_line([*argv, "s3://no-such-bucket/data"], capsys)
    assert f"s3://{s3_bucket}/empty: no train.csv or dev.csv" in error_line([*argv, f"s3://{s3_bucket}/empty"], capsys)
    broken = small_data(tmp_path / "broken", {"train": 4, "dev": 2})
    (broken / "dev.csv").write_text("fname,dialogue\n", encoding="utf-8")
    line = error_line([*argv, upload(broken, s3_bucket, "broken", moto_server.endpoint)], capsys)
    assert line.startswith(f"dialsum: error: s3://{s3_bucket}/broken: ") and "dev.csv" in line
    assert "unsupported data URL 'http://host/data'" in error_line([*argv, "http://host/data"], capsys)
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_train_all_and_sweep_train_on_data_in_s3(s3_bucket: str, moto_server, tmp_path: Path, prefect_api: str) -> None:
    """The README's nightly command with a tiny model, and a one-trial sweep, both with `--data s3://…`: each run
    records the fingerprint of the data in S3 (not of the bundled sample). Both report to the session's Prefect
    server."""
    data = small_data(tmp_path / "data", {"train": 16, "dev": 8, "test": 8})
    url = upload(data, s3_bucket, "dialsum/data", moto_server.endpoint)
    store = f"s3://{s3_bucket}/dialsum/runs"
    env = {**os.environ, "DIALSUM_OUTPUT_DIR": str(tmp_path / "outputs")}

    def run(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "dialsum.cli", *argv, "--data", url, "--storage", store, "--debug"],
            capture_output=True,
            text=True,
            timeout=400,
            env=env,
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    run("train-all", "--models", "tiny-bart", "--run-id", "nightly")
    run(
        "sweep",
        "--models",
        "tiny-bart",
        "--space",
        str(ROOT / "configs/sweeps/tiny-bart.yaml"),
        "--trials",
        "1",
        "--study",
        "from-s3",
    )
    client = s3_client(moto_server.endpoint)
    for run_id in ("nightly", "from-s3-t0000"):
        key = f"dialsum/runs/{run_id}/tiny-bart/manifest.json"
        manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
        assert manifest["extra"]["data_sha256"] == data_fingerprint(data) != data_fingerprint(None)
