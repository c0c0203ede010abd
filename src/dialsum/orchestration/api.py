"""The temporary local Prefect API that an embedded command (train-all, sweep, K-fold) reports to when
`PREFECT_API_URL` names no server.

The server is Prefect's own (`SubprocessASGIServer`: uvicorn on a free local port), with three differences: it
starts with SIGINT blocked, since Ctrl-C at a terminal reaches every process of the group and the children must
still report while they stop; it runs under `engine.lifeline`, so it exits when the command is gone, however
the command ended (`kill -9` included); and it gets `temporary_server.STOP_SECONDS` to shut down. Prefect's own lookups
(`SubprocessASGIServer()`, used by its ephemeral client) find this server: instances are shared per port. The
server itself is `temporary_server.TemporaryServer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED, get_current_settings, temporary_settings

from dialsum.errors import DialsumError
from dialsum.state import stop

STARTUP_SECONDS = 120


def start() -> str:
    """The URL of the API this process reports to: `PREFECT_API_URL`, else the temporary API, started here unless it
    runs already. That one is stopped at exit (after Prefect's log worker has sent the last lines), or by a second
    Ctrl-C."""
    configured = get_current_settings().api.url
    if configured:
        return configured
    from dialsum.orchestration.temporary_server import TemporaryServer

    server = TemporaryServer()
    if not server.running:
        # a new PREFECT_HOME's first start migrates its database: Prefect's 20 s default fails it on slow machines
        seconds = max(get_current_settings().server.ephemeral.startup_timeout_seconds, STARTUP_SECONDS)
        try:
            server.start(timeout=seconds)
        except RuntimeError as exc:
            server.stop()  # nothing left running: the server may still be starting
            raise DialsumError(
                f"the temporary Prefect API did not answer within {seconds} s ({str(exc)[:300]}); run `prefect "
                "server start` and set PREFECT_API_URL to it, or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
            ) from exc
        stop.at_hard_exit(server.stop)
    return server.api_url


@contextmanager
def embedded(options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """An embedded command's flow run: reporting to `PREFECT_API_URL` or the temporary API (`start`), stopped
    cooperatively by Ctrl-C or SIGTERM (`stop.cooperative`). Yields the flow's `options` with paths as strings."""
    options = {name: str(value) if isinstance(value, Path) else value for name, value in options.items()}
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: True}), stop.cooperative():
        start()
        yield options
