"""A run folder with realistic files, for the storage and artifacts tests."""

from __future__ import annotations

import os
from pathlib import Path

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
