"""Prefect's subprocess API server, as the temporary local API (`api`) runs it: under `engine.lifeline`, with
SIGINT blocked, and `STOP_SECONDS` to shut down. Its own module because importing Prefect's server takes seconds,
which only a command that starts this server should pay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings

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
