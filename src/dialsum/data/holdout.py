"""The one dev split behind every choice: a selection part that chooses, a held-out part that reports.

Each dev row falls in the held-out part or the selection part by a seeded hash of its `fname` alone, so a row keeps
its part whatever other rows the dev set holds (a grown dev set never moves a row that chose something into the
held-out part), and every run, model, sweep trial, fold and decoding search with the same seed and fraction agrees
on the parts. The seed and the held-out fraction are settings (`DIALSUM_SPLIT_SEED`, `DIALSUM_HELD_OUT_FRACTION`).

Every choice reads selection rows only: the best training step and early stopping (`eval_score_rows` and
`eval_loss_rows` are the first rows of the selection part), the ensemble strategy and pooled MBR's model weights,
a sweep's objective, the decoding search and the K-fold fold-ensemble strategy. A figure called held-out is
measured on held-out rows only, and every output that reports one carries `DevSplit.record(...)` (seed, fraction,
a hash of the held-out fnames), so figures on different splits are never compared.

`choosing(what)` marks code that feeds a choice, and `read(fnames)` declares the dev rows it reads there, next to
the metric or loss call that reads them: an audit (`audit()` in this process, `DIALSUM_CHOICE_AUDIT_FILE` across
processes) sees every such read with the choice it fed, so a test can assert that no held-out row ever chose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_SCALE = float(2**64)


@dataclass(frozen=True)
class DevSplit:
    """The split of dev rows by a seeded hash of fname: `fraction` of the rows (in expectation) are held out."""

    seed: int = 0
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"the held-out fraction must be between 0 and 1 (exclusive), got {self.fraction}")

    def is_held_out(self, fname: str) -> bool:
        digest = hashlib.sha256(f"{self.seed}\0{fname}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / _SCALE >= 1.0 - self.fraction

    def parts(self, fnames: Sequence[str]) -> tuple[list[str], list[str]]:
        """(selection, held_out): the fnames of each part, in the given order."""
        held = [f for f in fnames if self.is_held_out(f)]
        out = set(held)
        return [f for f in fnames if f not in out], held

    def selection_examples(self, examples: Sequence[Any]) -> list[Any]:
        """The examples (anything with `.fname`) of the selection part, in order."""
        return [ex for ex in examples if not self.is_held_out(ex.fname)]

    def held_out_examples(self, examples: Sequence[Any]) -> list[Any]:
        return [ex for ex in examples if self.is_held_out(ex.fname)]

    def record(self, fnames: Sequence[str]) -> dict[str, Any]:
        """What an output records about the split of `fnames`: seed, fraction, both sizes and the held-out hash."""
        selection, held = self.parts(fnames)
        return {
            "seed": self.seed,
            "held_out_fraction": self.fraction,
            "selection_rows": len(selection),
            "held_out_rows": len(held),
            "held_out_sha256": fnames_hash(held),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> DevSplit | None:
        """The split an output recorded (None when it recorded none)."""
        if not record or "seed" not in record or "held_out_fraction" not in record:
            return None
        return cls(int(record["seed"]), float(record["held_out_fraction"]))


def fnames_hash(fnames: Sequence[str]) -> str:
    """sha256 of the sorted fnames, one a line: two outputs with the same hash held out the same rows."""
    return hashlib.sha256("\n".join(sorted(fnames)).encode()).hexdigest()


def dev_split(seed: int | None = None, fraction: float | None = None) -> DevSplit:
    """The configured split (`get_settings()`), with `seed` or `fraction` replacing the setting when given."""
    from dialsum.settings import get_settings

    settings = get_settings()
    return DevSplit(
        settings.split_seed if seed is None else int(seed),
        settings.held_out_fraction if fraction is None else float(fraction),
    )


def same_split(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """True when two recorded splits held out the same rows (same seed, fraction and held-out hash)."""
    keys = ("seed", "held_out_fraction", "held_out_sha256")
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in keys)


# ---------------------------------------------------------------- the audit of choices

_AUDITS: list[Callable[[str, list[str]], None]] = []
_CHOOSING: list[str] = []


@contextmanager
def choosing(what: str) -> Iterator[None]:
    """Mark the code inside as feeding the choice `what` (reads inside are reported to audits)."""
    _CHOOSING.append(what)
    try:
        yield
    finally:
        _CHOOSING.pop()


def current_choice() -> str | None:
    """The innermost choice being made, or None outside `choosing`."""
    return _CHOOSING[-1] if _CHOOSING else None


def read(fnames: Sequence[str], what: str | None = None) -> None:
    """Declare that the code feeding a choice (`what`, default the current one) reads these dev rows."""
    what = what or current_choice()
    if what is None:
        return
    for audit_hook in list(_AUDITS):
        audit_hook(what, list(fnames))
    from dialsum.settings import get_settings

    path = get_settings().choice_audit_file
    if path is not None:
        import json

        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"choice": what, "fnames": list(fnames)}, ensure_ascii=False) + "\n")


@contextmanager
def audit(hook: Callable[[str, list[str]], None]) -> Iterator[None]:
    """Call `hook(choice, fnames)` for every declared read while the block runs (tests)."""
    _AUDITS.append(hook)
    try:
        yield
    finally:
        _AUDITS.remove(hook)
