"""Candidate files: `predictions/<split>_candidates.jsonl`, one JSON object per dialogue, in the split's order:

    {"fname": "dev_0", "candidates": [{"text": "...", "logprob": -12.3, "tokens": 21}, ...]}

`text` is a summary as `predictions/<split>.csv` would hold it; `logprob` is its log-probability under the model
that drew it and `tokens` its generated tokens (end token included). Written by the prediction phase, read by
the ensemble (MBR), so candidates outlive the GPUs that drew them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dialsum.data.splits import normalize
from dialsum.errors import DataError


def candidates_path(folder: Path, split: str) -> Path:
    return folder / f"{split}_candidates.jsonl"


def write_candidates(path: Path, fnames: Sequence[str], candidates: Sequence[Sequence[dict]]) -> None:
    """Write one line per dialogue, atomically (a temporary file renamed into place)."""
    if len(fnames) != len(candidates):
        raise ValueError("fnames and candidates differ in length")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for fname, row in zip(fnames, candidates):
                fh.write(json.dumps({"fname": fname, "candidates": list(row)}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_candidates(path: Path) -> dict[str, list[str]]:
    """fname -> candidate texts (normalised like predictions), in the file's order; errors name file and line."""
    out: dict[str, list[str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read candidates: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            fname, texts = row["fname"], [normalize(c["text"] or "") for c in row["candidates"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: line {number}: not a candidates row ({type(exc).__name__}: {exc})") from None
        if not texts:
            raise DataError(f"{path}: line {number} (fname {fname}): no candidates")
        if fname in out:
            raise DataError(f"{path}: line {number}: duplicate fname {fname}")
        out[fname] = texts
    return out
