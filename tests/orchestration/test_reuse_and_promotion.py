"""Nightly-style train-all runs on a real Prefect server with a process worker, data and runs on S3 (moto).

One test walks three nights and a prediction: the first night trains and promotes (no champion yet); the
second, on the same data, reports "unchanged" and trains nothing; after one training row changes, the
third retrains and promotes or keeps the champion as the dev scores say; `predict --run champion` then
writes a submission shaped like sample_submission.csv.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from support.prefect_server import artifacts, prefect
from support.processes import REPO, start_group, stop_group
from support.s3_server import CREDENTIALS, s3_client, use_endpoint
from test_train_all import create_pools, moto_endpoint  # noqa: F401  (a fixture)

from dialsum.data import sample_dir
from dialsum.orchestration.train_model import slug
from dialsum.release import registry
from dialsum.storage import open_storage, read_manifest

SHARED_SUBMISSION = REPO.parent / "shared" / "data" / "competition" / "sample_submission.csv"


def upload_data(client, bucket: str, folder: Path) -> None:
    for path in sorted(folder.glob("*.csv")):
        client.put_object(Bucket=bucket, Key=f"data/{path.name}", Body=path.read_bytes())


def night(env: dict[str, str], run_id: str, params: dict, worker_log: Path) -> None:
    try:
        prefect(
            "deployment",
            "run",
            "train-all/local",
            "--params",
            json.dumps({**params, "run_id": run_id}),
            "--watch",
            "--watch-timeout",
            "420",
            env=env,
            timeout=480,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker log:\n{worker_log.read_text()[-6000:]}") from None


def rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.slow
def test_nightly_runs_skip_unchanged_data_promote_and_serve_the_champion(
    prefect_server: tuple[str, dict[str, str]],
    moto_endpoint: str,  # noqa: F811  (a fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api_url, env = prefect_server
    bucket = f"nightly-{uuid.uuid4().hex[:8]}"
    client = s3_client(moto_endpoint)
    client.create_bucket(Bucket=bucket)
    data = tmp_path / "data"
    data.mkdir()
    for path in sample_dir().glob("*.csv"):
        (data / path.name).write_bytes(path.read_bytes())
    upload_data(client, bucket, data)
    create_pools(api_url)
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml", env=env, timeout=180)
    storage_url = f"s3://{bucket}/dialsum"
    runner_env = (
        env
        | CREDENTIALS
        | {
            "DIALSUM_S3_ENDPOINT_URL": moto_endpoint,
            "DIALSUM_CONFIG_DIR": str(REPO / "configs"),
            "DIALSUM_OUTPUT_DIR": str(tmp_path / "outputs"),
            "DIALSUM_CACHE_DIR": str(tmp_path / "cache"),
            "WANDB_MODE": "disabled",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
    )
    worker_log = tmp_path / "worker.log"
    worker = start_group(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "dialsum-process", "--type", "process"],
        runner_env,
        worker_log,
    )
    params = {
        "models": ["tiny-bart"],
        "debug": True,
        "storage_url": storage_url,
        "data_dir": f"s3://{bucket}/data",
        "promote": "if-better",
    }
    try:
        night(env, "night-1", params, worker_log)
        night(env, "night-2", params, worker_log)
        train = (data / "train.csv").read_text(encoding="utf-8")
        changed = train.replace("감사합니다, 선생님.", "고맙습니다, 선생님.", 1)
        assert changed != train
        (data / "train.csv").write_text(changed, encoding="utf-8")
        upload_data(client, bucket, data)
        night(env, "night-3", params, worker_log)
    finally:
        stop_group(worker)

    use_endpoint(monkeypatch, moto_endpoint)
    store = open_storage(storage_url)
    found = artifacts(api_url, [slug(f"{kind}-night-{n}") for kind in ("report", "train-all") for n in (1, 2, 3)])

    # Night 1: trained, promoted, the report links the PNG by a presigned URL that serves a PNG.
    first = found[slug("report-night-1")].data
    assert "**Decision: promoted.** no champion yet" in first
    url = re.search(r"\[Loss curves and dev scores \(PNG\)\]\((http[^)]+)\)", first).group(1)
    assert "/night-1/ensemble/report.png?" in url and "Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"

    # Night 2: same data, config and code: nothing trained, nothing published, "unchanged" reported.
    second = found[slug("report-night-2")].data
    assert "**Unchanged**" in second and "| tiny-bart | unchanged |" in second
    table = json.loads(found[slug("train-all-night-2")].data)
    assert [(r["model"], r["status"], r["seconds"]) for r in table] == [("tiny-bart", "unchanged", 0.0)]
    assert read_manifest("night-2", "tiny-bart", store) is None and read_manifest("night-2", "ensemble", store) is None

    # Night 3: one training row changed: retrained; promoted exactly when the paired lower bound of its gain over
    # night 1 on the same dev rows is above the margin (0), and the report says so with the interval.
    assert read_manifest("night-3", "tiny-bart", store) is not None
    champion = registry.current(store).champion["run_id"]
    third = found[slug("report-night-3")].data
    # nightly decisions use the 99% interval (`registry.NIGHTLY_CONFIDENCE`)
    low = float(
        re.search(r"Challenger - champion: [+-][0-9.]+ \(99% CI ([+-][0-9.]+) to [+-][0-9.]+\)", third).group(1)
    )
    if low > 0:
        assert champion == "night-3" and "**Decision: promoted.**" in third
    else:
        assert champion == "night-1" and "**Decision: not promoted.** challenger" in third

    # Serving: predict with the champion, fetched from storage.
    out = tmp_path / "served"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dialsum.cli",
            "predict",
            "--run",
            "champion",
            "--data",
            str(data),
            "--out",
            str(out),
            "--storage",
            storage_url,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=runner_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    submission = rows(out / "predictions" / "test.csv")
    test_rows = rows(data / "test.csv")
    expected_header = rows(SHARED_SUBMISSION)[0] if SHARED_SUBMISSION.is_file() else ["", "fname", "summary"]
    assert submission[0] == expected_header
    assert [r[1] for r in submission[1:]] == [r[0] for r in test_rows[1:]]
    assert [r[0] for r in submission[1:]] == [str(i) for i in range(len(test_rows) - 1)]
    assert len(submission) == len(test_rows) and all(len(r) == 3 for r in submission)


def test_the_nightly_deployment_promotes_if_better_from_a_storage_url() -> None:
    import inspect

    import yaml

    from dialsum.orchestration.train_all import train_all

    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text(encoding="utf-8"))
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    params = nightly["parameters"]
    assert params["promote"] == "if-better" and params["margin"] >= 0  # the paired lower bound must clear it
    assert params["data_dir"].startswith("s3://")
    assert set(params) <= set(inspect.signature(train_all.fn).parameters)
