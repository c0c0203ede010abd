"""K-fold assignment of train.csv: stratified by dialogue length, grouped by a `group` column when the data has one.

Units are rows, or the rows sharing a `group` value (a group never straddles two folds). Units are sorted into
length buckets (quantiles of their mean dialogue length in characters), shuffled within each bucket by the seed,
and dealt in turn to the fold that holds the fewest rows so far, so every fold gets the same mix of short and
long dialogues. The result depends only on the file's rows and the seed; `folds.json` records it with the seed,
k and the file's hash, byte for byte the same for the same inputs.

Each fold's data folder (`fold_data`) holds train.csv (the other folds, original columns), the real dev.csv (model
selection stays on dev) and test.csv: the held-out fold's dialogues, whose predictions are the out-of-fold
predictions, followed by the real test rows, whose predictions make the fold ensemble's submission.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dialsum.data import read_split, sample_dir
from dialsum.errors import DataError

GROUP_COLUMN = "group"
MAX_BUCKETS = 5


@dataclass(frozen=True)
class Folds:
    seed: int
    k: int
    train_sha256: str
    group_column: str | None
    buckets: int
    assignment: dict[str, int]  # fname -> fold, in train.csv order

    def to_json(self) -> str:
        data = {
            "seed": self.seed,
            "k": self.k,
            "train_sha256": self.train_sha256,
            "stratified_by": f"dialogue length (characters), {self.buckets} buckets",
            "group_column": self.group_column,
            "sizes": self.sizes(),
            "folds": self.assignment,
        }
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    def sizes(self) -> list[int]:
        return [sum(1 for f in self.assignment.values() if f == i) for i in range(self.k)]

    def members(self, fold: int) -> list[str]:
        return [fname for fname, f in self.assignment.items() if f == fold]

    @classmethod
    def from_json(cls, text: str) -> Folds:
        data = json.loads(text)
        buckets = int(data["stratified_by"].rsplit(", ", 1)[1].split()[0])
        return cls(
            data["seed"],
            data["k"],
            data["train_sha256"],
            data["group_column"],
            buckets,
            {str(k): int(v) for k, v in data["folds"].items()},
        )


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def assign(train_csv: Path, k: int, seed: int) -> Folds:
    """Folds of a validated train.csv."""
    examples = read_split(train_csv, "train")
    header, rows = _rows(train_csv)
    group_column = GROUP_COLUMN if GROUP_COLUMN in header else None
    if k < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}")
    units: dict[str, list[int]] = {}
    for i, (ex, row) in enumerate(zip(examples, rows)):
        key = (row.get(GROUP_COLUMN) or "").strip() if group_column else ""
        units.setdefault(f"g:{key}" if key else f"r:{ex.fname}", []).append(i)
    if len(units) < k:
        raise DataError(f"{train_csv}: {len(units)} {'groups' if group_column else 'rows'} cannot fill {k} folds")
    lengths = {u: sum(len(examples[i].dialogue) for i in idx) / len(idx) for u, idx in units.items()}
    order = sorted(units, key=lambda u: (lengths[u], u))
    buckets = max(1, min(MAX_BUCKETS, len(units) // k))
    rng = random.Random(seed)
    sizes = [0] * k
    fold_of: dict[str, int] = {}
    for b in range(buckets):
        chunk = order[b * len(order) // buckets : (b + 1) * len(order) // buckets]
        rng.shuffle(chunk)
        for unit in chunk:
            target = min(range(k), key=lambda f: (sizes[f], (f - len(fold_of)) % k))
            fold_of[unit] = target
            sizes[target] += len(units[unit])
    assignment = {}
    for unit, idx in units.items():
        for i in idx:
            assignment[examples[i].fname] = fold_of[unit]
    ordered = {ex.fname: assignment[ex.fname] for ex in examples}
    digest = hashlib.sha256(Path(train_csv).read_bytes()).hexdigest()
    return Folds(seed, k, digest, group_column, buckets, ordered)


def _csv(header: list[str], rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def fold_data(data_dir: Path | None, folds: Folds, fold: int) -> dict[str, bytes]:
    """The three CSV files of one fold's data folder (see the module docstring)."""
    root = Path(data_dir) if data_dir else sample_dir()
    header, rows = _rows(root / "train.csv")
    held = set(folds.members(fold))
    train = [r for r in rows if r["fname"].strip() not in held]
    test = [{"fname": r["fname"], "dialogue": r["dialogue"]} for r in rows if r["fname"].strip() in held]
    if (root / "test.csv").is_file():
        _, extra = _rows(root / "test.csv")
        clash = sorted(held & {r["fname"].strip() for r in extra})
        if clash:
            raise DataError(f"{root / 'test.csv'}: fname {clash[0]} is also a train row; k-fold needs distinct fnames")
        test += [{"fname": r["fname"], "dialogue": r["dialogue"]} for r in extra]
    return {
        "train.csv": _csv(header, train),
        "dev.csv": (root / "dev.csv").read_bytes(),
        "test.csv": _csv(["fname", "dialogue"], test),
    }


def references(data_dir: Path | None) -> dict[str, str]:
    """fname -> summary of train.csv (normalised as training reads it)."""
    root = Path(data_dir) if data_dir else sample_dir()
    return {ex.fname: ex.summary or "" for ex in read_split(root / "train.csv", "train")}


def describe(folds: Folds) -> dict[str, Any]:
    return {"k": folds.k, "seed": folds.seed, "sizes": folds.sizes(), "group_column": folds.group_column}
