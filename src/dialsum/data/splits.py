"""Competition-format data: reading, validation, noise normalisation and submission writing."""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dialsum.errors import DataError

SPLITS = ("train", "dev", "test")
PLACEHOLDER_RE = re.compile(r"#[A-Za-z][A-Za-z0-9]*#")
# Speaker tags and the PII placeholders of the competition data; more are discovered from the data.
KNOWN_PLACEHOLDERS = [f"#Person{i}#" for i in range(1, 8)] + [
    "#PhoneNumber#",
    "#Address#",
    "#DateOfBirth#",
    "#PassportNumber#",
    "#SSN#",
    "#CardNumber#",
    "#CarNumber#",
    "#Email#",
]
_BR_RE = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_SPACES_RE = re.compile(r"[ \t\u00a0\u3000]+")


@dataclass(frozen=True)
class Example:
    """One row of a split, as read from its CSV."""

    fname: str  # the row's id (the `fname` column), unique within its split
    dialogue: str  # the dialogue text, after `normalize`
    summary: str | None = None  # the reference summary, after `normalize`; None where the row has none (test)
    topic: str | None = None  # the `topic` column, where the split has one


def normalize(text: str) -> str:
    """Undo the competition data's noise: literal '\\n', <br> tags, BOMs, CRs and stray whitespace."""
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\\n", "\n")
    text = _BR_RE.sub("\n", text)
    lines = (_SPACES_RE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def sample_dir() -> Path:
    """The bundled sample dataset (train/dev/test in competition format)."""
    return Path(str(resources.files("dialsum.data") / "sample"))


def _read_rows(path: Path, required: list[str]) -> list[dict]:
    """The rows of a CSV that has the `required` columns and at least one row; a `DataError` naming it if not."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else _header(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a CSV file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(h for h in header if h)})")
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows


def read_split(path: Path, split: str) -> list[Example]:
    """Read and validate one CSV. Summaries are required for train and dev."""
    need_summary = split in ("train", "dev")
    rows = _read_rows(path, ["fname", "dialogue"] + (["summary"] if need_summary else []))
    return _validate_rows(path, split, rows, need_summary)


def read_references(path: Path) -> dict[str, str]:
    """fname -> reference summary, in file order, from a CSV with fname and summary columns (a dev.csv, or a
    submission-shaped file); every row needs both, once per fname."""
    references: dict[str, str] = {}
    for i, row in enumerate(_read_rows(path, ["fname", "summary"]), start=1):
        fname, summary = (row.get("fname") or "").strip(), normalize(row.get("summary") or "")
        where = f"{path}: row {i}" + (f" (fname {fname})" if fname else "")
        if not fname or not summary:
            raise DataError(f"{where}: a reference needs a fname and a summary")
        if fname in references:
            raise DataError(f"{where}: duplicate fname")
        references[fname] = summary
    return references


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return next(csv.reader(fh), [])


def _validate_rows(path: Path, split: str, rows: list[dict], need_summary: bool) -> list[Example]:
    seen: dict[str, int] = {}
    out = []
    for i, row in enumerate(rows, start=1):
        fname = (row.get("fname") or "").strip()
        where = f"{path}: row {i}" + (f" (fname {fname})" if fname else "")
        if not fname:
            raise DataError(f"{where}: empty fname")
        if fname in seen:
            raise DataError(f"{where}: duplicate fname, first seen at row {seen[fname]}")
        seen[fname] = i
        dialogue = normalize(row.get("dialogue") or "")
        if not dialogue:
            raise DataError(f"{where}: empty dialogue")
        summary = normalize(row["summary"]) if row.get("summary") is not None else None
        if need_summary and not summary:
            raise DataError(f"{where}: the {split} split needs a summary, and this row has none")
        out.append(Example(fname, dialogue, summary or None, (row.get("topic") or "").strip() or None))
    return out


def load_splits(data_dir: Path | None, splits=SPLITS, optional=("test",)) -> dict[str, list[Example]]:
    """Read `<split>.csv` from `data_dir` (the bundled sample when None)."""
    root = Path(data_dir) if data_dir is not None else sample_dir()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    out = {}
    for split in splits:
        path = root / f"{split}.csv"
        if not path.exists() and split in optional:
            continue
        out[split] = read_split(path, split)
    return out


def placeholders_in(examples: list[Example]) -> list[str]:
    """Known placeholders plus any `#Word#` tags found in the data, in a stable order."""
    found = set()
    for ex in examples:
        found.update(PLACEHOLDER_RE.findall(ex.dialogue))
        if ex.summary:
            found.update(PLACEHOLDER_RE.findall(ex.summary))
    return KNOWN_PLACEHOLDERS + sorted(found - set(KNOWN_PLACEHOLDERS))


def write_submission(path: Path, fnames: list[str], summaries: list[str]) -> None:
    """Write predictions shaped like sample_submission.csv (unnamed index, fname, summary), atomically."""
    if len(fnames) != len(summaries):
        raise ValueError("fnames and summaries differ in length")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["", "fname", "summary"])
            for i, (fname, summary) in enumerate(zip(fnames, summaries)):
                writer.writerow([i, fname, summary])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_submission(path: Path, normalized: bool = True) -> dict[str, str]:
    """fname -> summary from a submission-shaped CSV; `normalized=False` keeps each summary exactly as written
    (predictions passed on, e.g. by an ensemble or the champion, stay the model's bytes)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read predictions: {exc}") from None
    if rows and not {"fname", "summary"} <= rows[0].keys():
        raise DataError(f"{path}: predictions need fname and summary columns")
    fnames = [r["fname"] for r in rows]
    repeated = [f for f, n in Counter(fnames).items() if n > 1]
    if repeated:
        raise DataError(f"{path}: {len(repeated)} fname(s) appear more than once: {first_few(repeated)}")
    return {r["fname"]: normalize(r["summary"] or "") if normalized else r["summary"] or "" for r in rows}


def first_few(names: list[str], limit: int = 3) -> str:
    """The first `limit` names, comma-separated, with how many more there are."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
