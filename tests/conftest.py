"""Test environment: offline, no W&B unless a test asks, and every path under a per-session temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["s3_server"]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory, monkeypatch):
    from dialsum.settings import get_settings

    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("DIALSUM_CONFIG_DIR", str(ROOT / "configs"))
    monkeypatch.setenv("DIALSUM_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("DIALSUM_OUTPUT_DIR", str(base / "outputs"))
    monkeypatch.setenv("DIALSUM_STORAGE_URL", str(base / "artifacts"))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("DIALSUM_TEST_WANDB_MODE", "disabled"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED
