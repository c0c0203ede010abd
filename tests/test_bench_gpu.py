"""Smoke test of the GPU benchmark script: `bench/gpu/run.py --tiny` on CPU through the real 4-bit path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"name", "unit", "ours", "baseline", "ratio", "goal"}


def test_gpu_bench_tiny_writes_results(tmp_path):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        DIALSUM_CONFIG_DIR=str(ROOT / "configs"),
        CUDA_VISIBLE_DEVICES="",
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu" / "run.py"), "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("gpu_qlora_train", "gpu_generation"):
        result = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
        assert KEYS <= set(result) <= KEYS | {"details"}
        assert result["name"] == name
        assert all(isinstance(result[k], (int, float)) and result[k] > 0 for k in ("ours", "baseline", "ratio"))
    models = json.loads((tmp_path / "gpu_qlora_train.json").read_text(encoding="utf-8"))["details"]["models"]
    assert set(models) == {"qwen3-4b"}
    for info in models.values():
        assert info["linear4bit_modules"] > 0, "the base weights must be loaded in 4-bit"
        assert info["train"]["ours"]["real_tokens"] == info["train"]["baseline"]["real_tokens"]
    gen = json.loads((tmp_path / "gpu_generation.json").read_text(encoding="utf-8"))["details"]["models"]["qwen3-4b"]
    assert gen["merged"] is True
    for variant in ("baseline", "unmerged_config_batches", "ours", "ours_static_compile"):
        assert gen[variant].get("samples_per_s", 0) > 0, (variant, gen[variant])
