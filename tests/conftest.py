"""Test environment: offline, no W&B unless a test asks, and every path under a per-session temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.scheduling import work_unit

pytest_plugins = ["support.s3_server", "support.prefect_server"]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A loaded CI machine can take longer than the default 20 s to start the temporary Prefect server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# One torch thread per process (unless set): tiny models gain nothing from a second, and on a small machine the
# spinning threads of the test process, its `dialsum` children and their flow runs cost several times the work.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler (`-n`): each unit of work (`work_unit`) is handed to whichever worker is free, the
    units with the most tests first. (xdist's own `--dist loadgroup` marks do nothing under pytest 9: it renames
    items through an attribute pytest no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return Scheduler(config, log)


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Session-wide, so module-scoped fixtures that train models see it too."""
    base = tmp_path_factory.getbasetemp()
    patch = pytest.MonkeyPatch()
    patch.setenv("DIALSUM_CONFIG_DIR", str(ROOT / "configs"))
    patch.setenv("DIALSUM_CACHE_DIR", str(base / "cache"))
    patch.setenv("DIALSUM_OUTPUT_DIR", str(base / "outputs"))
    patch.setenv("DIALSUM_STORAGE_URL", str(base / "artifacts"))
    patch.setenv("WANDB_MODE", "disabled")
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _fresh_settings():
    from dialsum.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED
