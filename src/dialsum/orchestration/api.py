"""The temporary local Prefect API that an embedded command (train-all, sweep, K-fold) reports to when
`PREFECT_API_URL` names no server.

The server is Prefect's own (`SubprocessASGIServer`: uvicorn on a free local port), with three differences: it
starts with SIGINT blocked, since Ctrl-C at a terminal reaches every process of the group and the children must
still report while they stop; it runs under `engine.lifeline`, so it exits when the command is gone, however
the command ended (`kill -9` included); and it gets `STOP_SECONDS` to shut down. Prefect's own lookups
(`SubprocessASGIServer()`, used by its ephemeral client) find this server: instances are shared per port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED, get_current_settings, temporary_settings

from dialsum.engine import lifeline
from dialsum.state import stop

STOP_SECONDS = 2.0


class TemporaryServer(SubprocessASGIServer):
    """Prefect's subprocess API server, run under `engine.lifeline` with SIGINT blocked."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
            **lifeline.child_env(),
        }
        with stop.blocked(signal.SIGINT):
            return subprocess.Popen(lifeline.wrap(command), env=env)

    def stop(self) -> None:
        """Stop the server, waiting at most `STOP_SECONDS` for it to shut down (then it is killed)."""
        process = self.server_process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        super().stop()


def start() -> None:
    """Start the temporary API unless `PREFECT_API_URL` names a server or it runs already. It is stopped at exit
    (after Prefect's log worker has sent the last lines), or by a second Ctrl-C."""
    if get_current_settings().api.url:
        return
    server = TemporaryServer()
    if not server.running:
        server.start()
        stop.at_hard_exit(server.stop)


@contextmanager
def embedded(options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """An embedded command's flow run: reporting to `PREFECT_API_URL` or the temporary API (`start`), stopped
    cooperatively by Ctrl-C or SIGTERM (`stop.cooperative`). Yields the flow's `options` with paths as strings."""
    options = {name: str(value) if isinstance(value, Path) else value for name, value in options.items()}
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: True}), stop.cooperative():
        start()
        yield options
