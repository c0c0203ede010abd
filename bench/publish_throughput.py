"""Publish throughput: `dialsum.storage.publish` (hashes, verified uploads, manifest) vs plain boto3 upload_file.

Starts its own moto_server on 127.0.0.1, builds ~200 MB of adapter-like files, and times both ways of
uploading them to the same server, alternating, best of REPEATS (median ratio in details). Writes
bench/results/publish_throughput.json.

Usage: .venv/bin/python bench/publish_throughput.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import sized, write_result  # noqa: E402
from support.s3_server import CREDENTIALS, s3_client, start_moto  # noqa: E402

from dialsum.settings import get_settings  # noqa: E402
from dialsum.storage import Storage, open_storage, publish  # noqa: E402

MB = 1024 * 1024
FILES = {
    "adapter_model.safetensors": sized(160 * MB, MB),
    "tokenizer.json": sized(17 * MB, MB // 4),
    "tokenizer.model": sized(4 * MB, MB // 8),
    "predictions/dev.csv": sized(8 * MB, MB // 8),
    "predictions/test.csv": sized(11 * MB, MB // 8),
    "adapter_config.json": 900,
    "tokenizer_config.json": 2_000,
    "special_tokens_map.json": 600,
    "metrics.json": 300,
    "config.yaml": 1_500,
}
REPEATS = sized(7, 1)
BUCKET = "bench"


def make_files(folder: Path) -> int:
    """Write random files of the sizes in FILES; return the total byte count."""
    for rel, size in FILES.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            for start in range(0, size, 8 * MB):
                handle.write(os.urandom(min(8 * MB, size - start)))
    return sum(FILES.values())


def clear_bucket(client) -> None:
    """Delete every object so the in-memory server does not grow across repetitions."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


def time_ours(storage: Storage, run: Path, rep: int) -> float:
    started = time.perf_counter()
    publish(run, f"bench-{rep}", "qwen", storage=storage)
    return time.perf_counter() - started


def time_baseline(client, run: Path, rep: int) -> float:
    started = time.perf_counter()
    for rel in FILES:
        client.upload_file(str(run / rel), BUCKET, f"plain/runs/bench-{rep}/qwen/{rel}")
    return time.perf_counter() - started


def main() -> None:
    server = start_moto()
    os.environ.update(CREDENTIALS, DIALSUM_S3_ENDPOINT_URL=server.endpoint)
    get_settings.cache_clear()
    try:
        client = s3_client(server.endpoint)
        client.create_bucket(Bucket=BUCKET)
        storage = open_storage(f"s3://{BUCKET}/ours")
        with tempfile.TemporaryDirectory() as tmp:
            total = make_files(Path(tmp))
            times: dict[str, list[float]] = {"ours": [], "baseline": []}
            for rep in range(REPEATS):
                times["baseline"].append(time_baseline(client, Path(tmp), rep))
                clear_bucket(client)
                times["ours"].append(time_ours(storage, Path(tmp), rep))
                clear_bucket(client)
    finally:
        server.stop()
    ours, baseline = (round(total / 1e6 / min(times[k]), 1) for k in ("ours", "baseline"))
    result = {
        "name": "publish_throughput",
        "unit": "MB/s",
        "ours": ours,
        "baseline": baseline,
        "ratio": round(ours / baseline, 3),
        "goal": ">= 0.8",
        "details": {
            "bytes": total,
            "files": len(FILES),
            "repeats": REPEATS,
            "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
            "median_ratio": round(statistics.median(times["baseline"]) / statistics.median(times["ours"]), 3),
            "server": "moto_server on 127.0.0.1 (in-memory)",
            "ours_does": "sha256+CRC32 of every file (overlapped with uploads), CRC32-checksummed uploads with "
            "x-amz-meta-sha256, head_object verification of each file, manifest read and write",
            "baseline_does": "boto3 upload_file per file, default TransferConfig",
        },
    }
    write_result(**result)


if __name__ == "__main__":
    main()
