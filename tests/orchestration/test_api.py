"""The temporary local Prefect API of embedded commands: how long its first start may take, and what a user sees
when it does not answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)

from dialsum.errors import DialsumError
from dialsum.orchestration import api
from dialsum.orchestration.temporary_server import TemporaryServer


@pytest.fixture(autouse=True)
def own_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect shares its servers per port, class-wide; these tests start theirs apart from the process's."""
    monkeypatch.setattr(TemporaryServer, "_instances", {})


def test_a_configured_api_is_used_as_it_is() -> None:
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert api.start() == "http://127.0.0.1:9/api"


def test_a_first_start_gets_time_to_migrate_a_new_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's own 20 s fail a new PREFECT_HOME's first start on a slow machine; a longer setting is kept."""
    waited: list[int] = []

    def start(self: TemporaryServer, timeout: int | None = None) -> None:
        waited.append(timeout)
        self.running = True

    monkeypatch.setattr(TemporaryServer, "start", start)
    monkeypatch.setattr(TemporaryServer, "stop", lambda self: None)
    for setting in (20, 600):
        with temporary_settings(
            updates={PREFECT_API_URL: "", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: setting}
        ):
            TemporaryServer._instances.clear()
            assert api.start() == TemporaryServer().api_url
    assert waited == [api.STARTUP_SECONDS, 600]


def test_a_server_that_does_not_answer_is_one_clear_error_and_is_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(api, "STARTUP_SECONDS", 1)
    started: list[TemporaryServer] = []
    original = TemporaryServer._run_uvicorn_command

    def run(self: TemporaryServer):  # noqa: ANN202
        started.append(self)
        return original(self)

    monkeypatch.setattr(TemporaryServer, "_run_uvicorn_command", run)
    settings = {PREFECT_API_URL: "", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 1, PREFECT_HOME: tmp_path}
    with temporary_settings(updates=settings), pytest.raises(DialsumError, match="did not answer within 1 s") as err:
        api.start()
    assert "PREFECT_API_URL" in str(err.value) and len(started) == 1
    assert started[0].server_process is None and not started[0].running
