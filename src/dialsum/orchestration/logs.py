"""Our log lines in Prefect: inside a flow or task run, every `dialsum` line at INFO and above also goes to that
run's logs in the Prefect API (the UI, `prefect flow-run logs`), whatever the terminal's verbosity.

The `dialsum` logger does not propagate (so a terminal shows each line once), which would keep its lines from
Prefect's API handler on the root logger; `send_to_prefect()` gives it one of its own, passing only records
made inside a run (so nothing warns about missing runs outside flows, e.g. a lease heartbeat thread). The
console handler stays as `console.configure` set it, and a flow run that a worker started gets one too, so
the worker's output shows the same lines.
"""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

from dialsum import console


class InRunOnly(logging.Filter):
    """Pass records made inside a Prefect flow or task run (the API handler needs one to attach them to)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def send_to_prefect() -> None:
    """Route `dialsum` INFO lines to the current run's logs in the Prefect API (idempotent)."""
    console.ensure_handler()
    log = logging.getLogger("dialsum")
    if not any(isinstance(h, APILogHandler) for h in log.handlers):
        handler = APILogHandler()
        handler.setLevel(logging.INFO)
        handler.addFilter(InRunOnly())
        log.addHandler(handler)
