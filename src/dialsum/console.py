"""What a person sees in the terminal: each log line once, above the progress bars, and third-party chatter only
with `-v`.

`configure(verbose)` runs before torch, transformers, W&B or Prefect are imported, because several of
them read their switches from the environment at import time:

* our `dialsum` logger prints through one handler and does not propagate, so Prefect's console handler on
  the root logger does not print the same line again; its lines are written above any progress bar;
* default verbosity: Hugging Face progress bars ("Loading weights", "Writing model shards") are off,
  W&B is silent (no banner, no per-run history and summary), and Prefect's console handler shows warnings
  and errors only. Only console handlers are quieted: inside a flow run, Prefect's loggers stay at INFO, so
  the run's logs in the Prefect API are complete (`orchestration.logs` sends ours there too);
* always: bitsandbytes' warning about the optional `kernels` package (a CPU fast path) is dropped, and the
  temporary Prefect server that embedded runs start sends no telemetry (whose failures offline would print).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "WANDB_SILENT": "true",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
}
ALWAYS_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
FORMAT = "%(levelname)s %(name)s: %(message)s"

_position = threading.local()


class _DropKernelsHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels" not in record.getMessage()


class AboveProgressBars(logging.StreamHandler):
    """A stream handler that clears tqdm's bars, writes the line, and redraws them (tqdm's logging redirect).
    Given no stream, it writes to `sys.stderr` as it is at each line, as logging's last-resort handler does: a
    later redirect of `sys.stderr` is followed, never a stream that has since been closed."""

    def __init__(self, stream: TextIO | None = None) -> None:
        logging.Handler.__init__(self)
        self._stream = stream

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return self._stream if self._stream is not None else sys.stderr

    @stream.setter
    def stream(self, value: TextIO | None) -> None:
        self._stream = value

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


def configure(verbose: bool) -> None:
    """Set up the console for one CLI invocation (idempotent)."""
    if not verbose:
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
    for name, value in ALWAYS_ENV.items():
        os.environ.setdefault(name, value)
    ensure_handler()
    log = logging.getLogger("dialsum")
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if int(os.environ.get("RANK", "0") or 0) > 0:  # a data-parallel rank other than 0: rank 0 prints the lines
        for handler in log.handlers:
            if getattr(handler, "_dialsum", False):
                handler.setLevel(logging.WARNING)


def ensure_handler() -> None:
    """Our console handler on the `dialsum` logger, and INFO unless a level is set (a flow run that a worker
    started never ran `configure`); the logger does not propagate. Also drops bitsandbytes' hint about the
    optional `kernels` package, in the CLI and in every flow-run process (sweep and K-fold children)."""
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropKernelsHint) for f in bnb.filters):
        bnb.addFilter(_DropKernelsHint())
    log = logging.getLogger("dialsum")
    if not any(getattr(h, "_dialsum", False) for h in log.handlers):
        handler = AboveProgressBars()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._dialsum = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    log.propagate = False


@contextmanager
def model_position(index: int, total: int) -> Iterator[None]:
    """While a multi-model run trains its `index`-th of `total` models in this thread, bars say so."""
    _position.value = (index, total)
    try:
        yield
    finally:
        _position.value = None


def bar_label(model: str, what: str) -> str:
    """A progress bar's name: the model and the work, plus "model 2 of 3" inside a multi-model run."""
    position = getattr(_position, "value", None)
    return f"{model} {what}" + (f" (model {position[0]} of {position[1]})" if position else "")
