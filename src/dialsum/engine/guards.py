"""The non-finite guard: a step whose loss or gradient is NaN or infinite is skipped, counted, and too many in a row
stop the run.

The check costs one host sync per optimizer step (a single combined flag); loss values otherwise stay on the
device. With several ranks the flag is agreed over all of them, so every rank skips or steps together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from dialsum.engine import distributed
from dialsum.errors import DialsumError

log = logging.getLogger(__name__)


class NonFiniteError(DialsumError):
    """Training produced non-finite losses or gradients too many steps in a row."""


@dataclass
class StepGuard:
    """Counts skipped steps; `state_dict`/`load_state_dict` let a checkpoint carry the counters."""

    max_bad_steps: int
    in_a_row: int = 0
    skipped: int = 0

    def check(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        """True when `step` may update the weights; raises NonFiniteError after `max_bad_steps` bad steps in a row.

        `grad_norm` None leaves gradient overflow to a GradScaler, which skips such steps itself.
        """
        flag = torch.isfinite(loss)
        if grad_norm is not None:
            flag = flag & torch.isfinite(grad_norm.to(loss.device))
        if bool(distributed.all_true(flag).item()):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        log.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)", step, self.in_a_row)
        if self.in_a_row >= self.max_bad_steps:
            raise NonFiniteError(
                f"step {step}: non-finite loss or gradient {self.in_a_row} steps in a row "
                f"(training.max_bad_steps={self.max_bad_steps}); lower the learning rate or check the data"
            )
        return False

    def state_dict(self) -> dict:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row, self.skipped = int(state["in_a_row"]), int(state["skipped"])
