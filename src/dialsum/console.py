"""What a person sees in the terminal: each log line once, and third-party chatter only with `-v`.

`configure(verbose)` runs before torch, transformers, W&B or Prefect are imported, because several of
them read their switches from the environment at import time:

* our `dialsum` logger prints through one handler and does not propagate, so Prefect's console handler on
  the root logger does not print the same line again;
* default verbosity: Hugging Face progress bars ("Loading weights", "Writing model shards") are off,
  W&B is silent (no banner, no per-run history and summary), Prefect prints warnings and errors only;
* always: bitsandbytes' warning about the optional `kernels` package (a CPU fast path) is dropped.
"""

from __future__ import annotations

import logging
import os

QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "WANDB_SILENT": "true",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}
FORMAT = "%(levelname)s %(name)s: %(message)s"


class _DropKernelsHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels" not in record.getMessage()


def configure(verbose: bool) -> None:
    """Set up the console for one CLI invocation (idempotent)."""
    if not verbose:
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHint())
    log = logging.getLogger("dialsum")
    if not any(getattr(h, "_dialsum", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._dialsum = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
