"""One Prefect server for the whole test session, started the first time a test asks for it.

Every server test shares it (SQLite in a session temp folder, `prefect server start` on a free local port), so
each test keeps to its own runs: its own run ids, studies, storage and tags, and it reads back only the runs and
artifacts it made (`flow_runs`, `artifacts`). Work pools and deployments have fixed names (`infra/`), so a test that
starts a worker stops it before it ends, and the flow runs a test leaves unfinished are deleted when it ends: no
later test's worker picks them up.

Fixtures (registered from tests/conftest.py):

* `prefect_server`: `(api_url, env)`; `env` is a client environment with this test's own PREFECT_HOME.
* `prefect_api`: the same server for this process's Prefect client and for subprocesses that inherit
  `os.environ`, so an embedded command reports there instead of starting a temporary server of its own.

`migrated_home(path)` makes `path` a PREFECT_HOME whose database is already at Prefect's head revision, copied
from one database migrated per test session: a server started there skips the migrations (about 6 s of CPU each).
The commands of `tests/cli/test_interrupt.py` still start theirs on an empty PREFECT_HOME, as a new user's first
command does.

A test that uses any of them is marked `server`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL, temporary_settings

from support.processes import REPO, start_group, stop_group
from support.s3_server import free_port

SERVER_FIXTURES = {"prefect_session_server", "prefect_server", "prefect_api"}
DATABASE = "prefect.db"
_session_root: list[Path] = []  # the session's temp root, shared by xdist workers (`_record_session_root`)
UNFINISHED = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    log: Path


def base_env(home: Path) -> dict[str, str]:
    """This process's environment without Prefect, dialsum or AWS settings, with its own PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DIALSUM_", "AWS_"))}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy within {timeout} s:\n{log.read_text()[-3000:]}")


def prefect(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """The `prefect` CLI; asserts that it succeeded."""
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def flow_runs(api_url: str, flow_run_filter: FlowRunFilter | None = None, limit: int = 200) -> list[Any]:
    """The latest `limit` flow runs on the server (of those `flow_run_filter` selects), oldest first."""
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=flow_run_filter, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit
        )
    return sorted(runs, key=lambda r: r.created)


def artifacts(api_url: str, keys: list[str]) -> dict[str, Any]:
    """The latest artifact of each of `keys` that the server holds."""
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return {a.key: a for a in sorted(found, key=lambda a: a.created)}


def unfinished_runs(api_url: str) -> set[Any]:
    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))
    return {run.id for run in flow_runs(api_url, FlowRunFilter(state=state))}


def delete_runs(api_url: str, ids: set[Any]) -> None:
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for flow_run_id in ids:
            client.delete_flow_run(flow_run_id)


def migrated_database() -> Path:
    """The session's empty Prefect database at head revision: made once (`prefect server database upgrade`) by
    whichever test process asks first, under a lock the other workers wait on."""
    folder = _session_root[0] / "prefect-migrated"
    folder.mkdir(exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / DATABASE).is_file():
            home = folder / "making"
            shutil.rmtree(home, ignore_errors=True)
            prefect("server", "database", "upgrade", "-y", env=base_env(home), timeout=300)
            os.replace(home / DATABASE, folder / DATABASE)
    return folder / DATABASE


def migrated_home(home: Path) -> Path:
    """`home` as a PREFECT_HOME holding a copy of the migrated database (`migrated_database`), unless it has a
    database already."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / DATABASE).exists():
        shutil.copyfile(migrated_database(), home / DATABASE)
    return home


@pytest.fixture(scope="session", autouse=True)
def _record_session_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    _session_root[:] = [base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the session's server is marked `server` (`make test-fast` leaves it out)."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def prefect_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """The session's Prefect server; started on first use, stopped when the session ends."""
    folder = tmp_path_factory.mktemp("prefect-server")
    port, log = free_port(), folder / "server.log"
    # its scheduler off: the nightly deployment's cron creates no runs
    env = base_env(migrated_home(folder / "home")) | {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    process = start_group(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, process, log)
        yield PrefectServer(url, log)
    finally:
        stop_group(process)


@pytest.fixture
def prefect_server(prefect_session_server: PrefectServer, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The session's server for one test: its API URL and a client env; the runs the test leaves unfinished are
    deleted when it ends."""
    url = prefect_session_server.api_url
    before = unfinished_runs(url)
    yield url, base_env(tmp_path / "prefect-home") | {"PREFECT_API_URL": url}
    delete_runs(url, unfinished_runs(url) - before)


@pytest.fixture
def prefect_api(prefect_server: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session's server for this process's Prefect client and for subprocesses that copy `os.environ`."""
    url, _ = prefect_server
    monkeypatch.setenv("PREFECT_API_URL", url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url
