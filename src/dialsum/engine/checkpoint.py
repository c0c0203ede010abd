"""Training checkpoints: written atomically, published to the run's storage, restored to resume a run.

A checkpoint is a folder `step-<8 digits>/` holding `state.pt` (the trainable weights, optimizer, scheduler
and scaler state, and every RNG state) and `meta.json` (step, epoch, the next window of that epoch, the losses
so far, and a fingerprint of config and data). It is written under a temp name and renamed, then published to
`<run-id>/<model>/checkpoints/<name>/` with its manifest last, so a half-written checkpoint never counts,
locally or in storage. The newest `keep` checkpoints are kept in both places.

On SIGTERM (`stop_on_sigterm`) the loop finishes its step, checkpoints, publishes and raises `Preempted`, with
no evaluation in between (one that was due runs first when the run resumes); a timer exits the process hard if
that has not happened within the grace period.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dialsum import storage as store
from dialsum.engine import distributed
from dialsum.errors import DialsumError
from dialsum.state import stop
from dialsum.state.stop import Preempted

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
META_FILE = "meta.json"
_NAME_RE = re.compile(r"step-(\d{8})")
HARD_EXIT_CODE = 143


class CheckpointError(DialsumError):
    """A checkpoint that cannot be used for this run."""


@dataclass
class Position:
    """Where training stands: optimizer steps done, the epoch, and the next window of that epoch."""

    step: int
    epoch: int
    window: int
    losses: list[float] = field(default_factory=list)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict:
    """Every RNG the loop draws from: Python, NumPy, torch CPU and (when present) each CUDA device."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters training changes (all of them for full fine-tuning, the adapters for LoRA), on the CPU."""
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, tensors: dict[str, torch.Tensor]) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if params.keys() != tensors.keys():
        missing = sorted(params.keys() ^ tensors.keys())
        raise CheckpointError(f"checkpoint weights do not fit this model (e.g. {missing[0]}); use a new run id")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def write(
    folder: Path, position: Position, fingerprint: str, model, optimizer, scheduler, scaler, extras: dict | None = None
) -> Path:
    """Write one checkpoint folder atomically (temp folder, then rename); returns its path."""
    name = checkpoint_name(position.step)
    final, temp = folder / name, folder / f".{name}.tmp"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    payload = {
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "rng": rng_state(),
        "extras": {k: obj.state_dict() for k, obj in (extras or {}).items()},
    }
    torch.save(payload, temp / STATE_FILE)
    meta = {
        "step": position.step,
        "epoch": position.epoch,
        "window": position.window,
        "losses": position.losses,
        "fingerprint": fingerprint,
    }
    (temp / META_FILE).write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temp, final)
    return final


def local_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint folders under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME_RE.fullmatch(p.name) and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


class Checkpointer:
    """Saves, publishes, prunes and restores the checkpoints of one model run.

    `every`: optimizer steps between checkpoints (None: only at epoch ends and the last step). `storage`
    (with `run_id` and `model`) also publishes each checkpoint and lets `restore` resume on another machine.
    """

    def __init__(
        self,
        folder: Path,
        every: int | None,
        keep: int,
        fingerprint: str,
        run_id: str | None = None,
        model: str | None = None,
        storage: store.Storage | None = None,
    ) -> None:
        self.folder, self.every, self.keep, self.fingerprint = Path(folder), every, keep, fingerprint
        self.run_id, self.model, self.storage = run_id, model, storage
        self.stop = threading.Event()
        self.saved = 0
        self.seconds = 0.0
        self.resumed_at: int | None = None
        self._agreed = False

    def _remote(self) -> list[str]:
        return store.list_checkpoints(self.run_id, self.model, self.storage) if self.storage else []

    def latest(self) -> Path | None:
        """The newest checkpoint, local or published (fetched into the local folder if only published). Under data
        parallelism rank 0 looks and fetches while the other ranks wait; then all read the same folder."""
        name = distributed.on_main(self._newest_here)
        return None if name is None else self.folder / name

    def _newest_here(self) -> str | None:
        local = {p.name: p for p in local_checkpoints(self.folder)}
        newest = max(set(local) | set(self._remote()), default=None)
        if newest is not None and newest not in local:
            log.info("fetching checkpoint %s of %s/%s from %s", newest, self.run_id, self.model, self.storage.url)
            shutil.rmtree(self.folder / newest, ignore_errors=True)
            store.fetch_checkpoint(self.run_id, self.model, newest, self.folder / newest, self.storage)
        return newest

    def restore(self, model, optimizer, scheduler, scaler, extras: dict | None = None) -> Position | None:
        """Load the newest checkpoint into the model, optimizer, scheduler, scaler, RNGs and `extras` (objects with
        `load_state_dict`, such as the step guard and the best-weights tracker); None if there is none."""
        path = self.latest()
        if path is None:
            return None
        meta = json.loads((path / META_FILE).read_text())
        if meta["fingerprint"] != self.fingerprint:
            raise CheckpointError(f"checkpoint {path} was made with a different config or data; use a new run id")
        payload = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        load_trainable(model, payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload["scaler"] is not None:
            scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        for key, obj in (extras or {}).items():
            if key in payload.get("extras", {}):
                obj.load_state_dict(payload["extras"][key])
        self.resumed_at = meta["step"]
        log.info(
            "resumed %s at step %d (epoch %d, window %d) from %s",
            self.model or "training",
            meta["step"],
            meta["epoch"],
            meta["window"],
            path.name,
        )
        return Position(meta["step"], meta["epoch"], meta["window"], list(meta["losses"]))

    def _asked_here(self) -> bool:
        return self.stop.is_set() or stop.requested()

    def stopping(self) -> bool:
        """Whether a stop was asked (SIGTERM or Ctrl-C) here or on any other data-parallel rank. The trainer asks
        once per step, and under data parallelism that answer holds for the whole step, so every rank skips
        evaluation, checkpoints and stops at the same step."""
        self._agreed = distributed.any_true(self._asked_here())
        return self._agreed

    def _stop_asked(self) -> bool:
        return self._agreed if distributed.active() else self._asked_here()

    def due(self, steps: int, window: int, n_windows: int, total: int) -> bool:
        """Every `every` steps, at an epoch end, at the last step, or after SIGTERM or Ctrl-C."""
        epoch_end = window + 1 == n_windows
        return self._stop_asked() or epoch_end or steps >= total or bool(self.every and steps % self.every == 0)

    def after_step(
        self,
        steps: int,
        losses: list[float],
        epoch: int,
        window: int,
        n_windows: int,
        total: int,
        model,
        optimizer,
        scheduler,
        scaler,
        extras: dict | None = None,
    ) -> None:
        """Checkpoint when due (see `due`); after SIGTERM raise `Preempted`, after Ctrl-C `stop.Interrupted`, once
        the checkpoint is out."""
        if not self.due(steps, window, n_windows, total):
            return
        epoch_end = window + 1 == n_windows
        stopping = self._stop_asked()
        position = (
            Position(steps, epoch + 1, 0, list(losses))
            if epoch_end
            else Position(steps, epoch, window + 1, list(losses))
        )
        if distributed.is_main():  # one writer; every rank resumes from the same files
            self.save(position, model, optimizer, scheduler, scaler, extras)
        if stopping and not stop.requested():  # SIGTERM, here or on another rank
            raise Preempted(
                f"stopped by SIGTERM after step {steps}; checkpoint {checkpoint_name(steps)} is saved"
                + (f" and published to {self.storage.url}" if self.storage else "")
                + "; rerun the same run id to resume"
            )
        if stopping and steps < total:  # Ctrl-C
            raise stop.Interrupted(
                f"{self.model or 'training'}: stopped at step {steps} of {total}; checkpoint "
                f"{checkpoint_name(steps)} saved" + (f" and published to {self.storage.url}" if self.storage else "")
            )

    def save(self, position: Position, model, optimizer, scheduler, scaler, extras: dict | None = None) -> Path:
        started = time.perf_counter()
        path = write(self.folder, position, self.fingerprint, model, optimizer, scheduler, scaler, extras)
        if self.storage is not None:
            store.publish_checkpoint(path, self.run_id, self.model, path.name, self.storage)
        self._prune()
        self.saved += 1
        self.seconds += time.perf_counter() - started
        log.debug(
            "%s: checkpoint %s saved%s in %.1f s",
            self.model or "training",
            path.name,
            " and published" if self.storage else "",
            time.perf_counter() - started,
        )
        return path

    def _prune(self) -> None:
        for old in local_checkpoints(self.folder)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        if self.storage is not None:
            for name in self._remote()[: -self.keep]:
                store.delete_checkpoint(self.run_id, self.model, name, self.storage)


def _hard_exit(grace: float) -> None:
    log.error("no checkpoint within the %.0f s grace period after SIGTERM; exiting", grace)
    logging.shutdown()
    os._exit(HARD_EXIT_CODE)


@contextmanager
def stop_on_sigterm(checkpointer: Checkpointer, grace: float) -> Iterator[None]:
    """While active, SIGTERM asks the loop to checkpoint and stop; a timer exits hard after `grace` seconds.

    Signal handlers can only be installed from the main thread; elsewhere (a subflow thread) this does nothing,
    and so where the CLI (or a local child) handles SIGTERM itself: there it stops as Ctrl-C does (`stop`).
    """
    if threading.current_thread() is not threading.main_thread() or stop.handling():
        yield
        return

    def handler(signum, frame) -> None:
        if checkpointer.stop.is_set():
            return
        log.warning("SIGTERM: finishing the current step, then checkpointing (hard exit in %.0f s)", grace)
        checkpointer.stop.set()
        timer = threading.Timer(grace, _hard_exit, args=(grace,))
        timer.daemon = True
        timer.start()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)  # a started timer keeps running: the process is on its way out
