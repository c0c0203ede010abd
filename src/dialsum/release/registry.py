"""The champion: which published run is in service, how a challenger replaces it, and its history.

Layout under the storage root:

* `champion-history/<generation>.json` (8 digits): one immutable record per change (promotion or rollback):
  `{"generation", "previous", "action", "reason", "at", "comparison", "champion": {...}}` (`comparison`: the
  promotion's challenger - champion difference with its 95% interval). A record is created with a
  create-only write (S3 `If-None-Match: *`; locally a hard link, which fails when the name exists), so of
  two writers that both saw generation N exactly one creates N+1: no lock, no lost update, and the loser
  is told who won. `previous` is the generation whose champion this one replaced (for rollback).
* `champion.json`: a copy of the newest record, for people and tools that read one object. It is
  replaced with a conditional write (S3 `If-Match` on the version it was read at). Readers always check
  for newer generations after it, so a pointer left behind by a crash is caught up on the next read.

The champion names a run (`run_id`) and a model in it: `ensemble` (with its members, the run each member was
trained in (`sources`: an unchanged model is reused from an earlier run) and its strategy) or one model. It
carries the dev score, the dev data hash it was scored on, the data, config and code hashes, and the commit, so a
challenger is compared like for like: row by row on the same dev rows, by a paired bootstrap (`decide`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dialsum import storage
from dialsum.data.holdout import DevSplit
from dialsum.errors import DialsumError

log = logging.getLogger(__name__)

POINTER = "champion.json"
HISTORY = "champion-history"
ENSEMBLE = "ensemble"
POLICIES = ("never", "if-better", "always")
PROMOTION_CONFIDENCE = 0.95
"""One decision (`dialsum champion promote`): the two-sided confidence of the interval whose lower bound must clear
the margin (one-sided level 2.5%); with the held-out part of `data.holdout`, also right after a sweep."""
NIGHTLY_CONFIDENCE = 0.99
"""Decisions repeated night after night on the same held-out rows (`train-all --promote if-better`): one-sided 0.5%,
so that 30 nights without a real gain promote at most 10% of the time (`bench/promotion.py`)."""


class RegistryError(DialsumError):
    """The champion registry cannot do what was asked (nothing to roll back to, an unknown run, ...)."""


@dataclass(frozen=True)
class Decision:
    """Whether a challenger was (or would be) promoted, and why, in one sentence."""

    promoted: bool
    reason: str
    challenger_score: float | None = None
    champion_score: float | None = None
    generation: int | None = None
    champion: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None  # challenger - champion: mean, low, high, rows, confidence

    def as_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "challenger_score": self.challenger_score,
            "champion_score": self.champion_score,
            "generation": self.generation,
            "comparison": self.comparison,
        }


@dataclass(frozen=True)
class Record:
    generation: int
    champion: dict[str, Any]
    previous: int | None
    action: str
    reason: str
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    comparison: dict[str, Any] | None = None  # the promotion's challenger - champion difference and interval

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=2, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Record:
        try:
            raw = json.loads(data)
            return cls(
                int(raw["generation"]),
                dict(raw["champion"]),
                raw.get("previous"),
                raw["action"],
                raw.get("reason", ""),
                raw.get("at", ""),
                raw.get("comparison"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"malformed champion record {where}: {exc}") from None


def _history_key(generation: int) -> str:
    return f"{HISTORY}/{generation:08d}.json"


def _read_record(store: storage.Storage, generation: int) -> Record | None:
    key = _history_key(generation)
    data = store.read_bytes(key)
    return None if data is None else Record.from_json(data, store.location(key))


# ---------------------------------------------------------------- reading


def current(store: storage.Storage) -> Record | None:
    """The champion in service: the pointer, or a newer generation after it (the pointer is then caught up)."""
    tagged = store.read_tagged(POINTER)
    record = Record.from_json(tagged[0], store.location(POINTER)) if tagged else None
    generation = record.generation if record else 0
    newest = record
    while (following := _read_record(store, generation + 1)) is not None:
        newest, generation = following, generation + 1
    if newest is not None and newest is not record:
        _write_pointer(store, newest, tagged[1] if tagged else None)
    return newest


def history(store: storage.Storage) -> list[Record]:
    """Every record, oldest first."""
    records = []
    for key in sorted(store.list_keys(f"{HISTORY}/")):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(".json") and name[:-5].isdigit():
            records.append(Record.from_json(store.read_bytes(key) or b"", store.location(key)))
    return sorted(records, key=lambda r: r.generation)


def _write_pointer(store: storage.Storage, record: Record, tag: str | None) -> None:
    """Best effort: a refused write means someone else moved the pointer; readers follow history anyway."""
    data = record.to_json()
    written = store.create_bytes(POINTER, data) if tag is None else store.replace_if(POINTER, data, tag)
    if not written:
        log.debug("champion pointer moved concurrently; generation %d stays in history", record.generation)


# ---------------------------------------------------------------- describing runs


def _read_json(store: storage.Storage, run_id: str, model: str, rel: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """A JSON file of a published run, checked against its manifest."""
    import hashlib

    entry = next((e for e in manifest["files"] if e["path"] == rel), None)
    key = storage.run_key(run_id, model, rel)
    data = store.read_bytes(key) if entry else None
    if data is None:
        raise RegistryError(f"{run_id}/{model} has no {rel}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise RegistryError(f"checksum mismatch for {rel} of {run_id}/{model}: the stored file was changed")
    return json.loads(data)


def _manifest(store: storage.Storage, run_id: str, model: str) -> dict[str, Any]:
    manifest = storage.read_manifest(run_id, model, store)
    if manifest is None:
        raise RegistryError(f"{run_id}/{model} is not published in {store.url}")
    return manifest


def describe(store: storage.Storage, run_id: str, model: str | None = None) -> dict[str, Any]:
    """The champion entry for a published run: its ensemble (default, when published) or one model."""
    storage.check_name(run_id, "run id")
    if model is None:
        model = ENSEMBLE if storage.read_manifest(run_id, ENSEMBLE, store) is not None else None
        if model is None:
            models = sorted({r.model for r in storage.list_runs(store) if r.run_id == run_id})
            if len(models) != 1:
                raise RegistryError(
                    f"run {run_id} has no published ensemble; name one model with RUN_ID/MODEL "
                    f"(published: {', '.join(models) or 'none'})"
                )
            model = models[0]
    manifest = _manifest(store, run_id, model)
    if model == ENSEMBLE:
        summary = _read_json(store, run_id, model, "ensemble.json", manifest)
        members = sorted(summary["dev_scores"])
        sources = {m: summary.get("sources", {}).get(m, run_id) for m in members}
        member_manifests = {m: _manifest(store, sources[m], m) for m in members}
        entry = {
            "kind": "ensemble",
            "sources": sources,
            "dev_score": summary["dev_score"],
            "strategy": summary["choice"],
            "best_model": summary.get("best_model"),
            "held_out_score": summary.get("held_out_score"),
            "metric_weights": summary.get("metric_weights"),
            "weights": summary["weights"],
            "member_scores": summary["dev_scores"],
            "dev_sha256": summary.get("dev_sha256"),
            "dev_rows": summary.get("rows", {}).get("dev_scored"),
            "split": summary.get("split"),
        }
    else:
        metrics = _read_json(store, run_id, model, "metrics.json", manifest)
        members, member_manifests = [model], {model: manifest}
        entry = {
            "kind": "model",
            "sources": {model: run_id},
            "dev_score": metrics["dev"]["score"],
            "strategy": None,
            "best_model": model,
            "held_out_score": (metrics.get("dev_held_out") or {}).get("score"),
            "weights": {model: 1.0},
            "member_scores": {model: metrics["dev"]["score"]},
            "dev_sha256": manifest.get("extra", {}).get("dev_sha256"),
            "dev_rows": None,
            "split": (metrics.get("dev_held_out") or {}).get("split"),
        }
    extras = {m: man.get("extra", {}) for m, man in member_manifests.items()}
    return {
        "run_id": run_id,
        "model": model,
        "members": members,
        **entry,
        "data_sha256": next((e.get("data_sha256") for e in extras.values() if e.get("data_sha256")), None),
        "config_sha256": {m: e.get("config_sha256") for m, e in extras.items()},
        "code_sha256": next((e.get("code_sha256") for e in extras.values() if e.get("code_sha256")), None),
        "commit": manifest.get("git_commit"),
    }


# ---------------------------------------------------------------- comparing


def _saved_predictions(store: storage.Storage, entry: dict[str, Any]) -> dict[str, str] | None:
    import tempfile
    from pathlib import Path

    from dialsum.data import read_submission

    data = store.read_bytes(storage.run_key(entry["run_id"], entry["model"], "predictions/dev.csv"))
    if data is None:
        return None
    with tempfile.TemporaryDirectory(prefix="dialsum-rescore-") as tmp:
        (Path(tmp) / "dev.csv").write_bytes(data)
        return read_submission(Path(tmp) / "dev.csv")


def rescore(
    store: storage.Storage,
    entry: dict[str, Any],
    references: dict[str, str],
    who: str = "champion",
    require_all: bool = True,
) -> tuple[dict[str, float] | None, str]:
    """Each row's score of the entry's saved dev predictions against `references` (fname -> 0..100), for every
    reference row (`require_all`) or those it predicted; or why there is none."""
    from dialsum.metric import row_scores

    predictions = _saved_predictions(store, entry)
    if predictions is None:
        return None, f"the {who} {entry['run_id']}/{entry['model']} has no saved dev predictions"
    missing = [f for f in references if f not in predictions]
    if require_all and missing:
        return None, (
            f"the {who}'s saved dev predictions cover {len(references) - len(missing)} of the "
            f"{len(references)} dialogues of the new dev set (missing e.g. {missing[0]})"
        )
    fnames = [f for f in references if f in predictions]
    return dict(zip(fnames, row_scores([predictions[f] for f in fnames], [references[f] for f in fnames]))), ""


def _published(store: storage.Storage, entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's ensemble.json or metrics.json, checked against its manifest."""
    rel = "ensemble.json" if entry["model"] == ENSEMBLE else "metrics.json"
    return _read_json(store, entry["run_id"], entry["model"], rel, _manifest(store, entry["run_id"], entry["model"]))


def published_rows(store: storage.Storage, entry: dict[str, Any]) -> tuple[dict[str, float] | None, list[str] | None]:
    """The per-row dev scores a run published (None before they were published) and its held-out rows: those
    that did not choose its strategy (ensemble) or its best training step (model); None: all rows."""
    data = _published(store, entry)
    if entry["model"] == ENSEMBLE:
        return data.get("row_scores") or None, data.get("held_out") or None
    rows = data.get("dev_row_scores") or None
    if not rows:
        return None, None
    split = DevSplit.from_record((data.get("dev_held_out") or {}).get("split"))
    if split is None:  # published before the one dev split: the rows after those that chose the best step
        return rows, list(rows)[(data.get("dev_held_out") or {}).get("selection_rows", 0) :] or None
    return rows, split.parts(list(rows))[1] or None


def _rows(
    store: storage.Storage, challenger: dict[str, Any], champ: dict[str, Any], references: dict[str, str] | None
) -> tuple[dict | None, dict | None, list[str] | None, str]:
    """Both sides' per-row dev scores, the challenger's held-out rows, and how they were obtained (or why not)."""
    _, held = published_rows(store, challenger)
    same = champ.get("dev_sha256") is not None and champ.get("dev_sha256") == challenger.get("dev_sha256")
    if not same and references is None:
        return (
            None,
            None,
            held,
            ("cannot compare: the dev data differs from the champion's and no references were given to re-score it"),
        )
    if references is not None:  # the champion must cover a new dev set; on the same one, the rows both predicted
        theirs, why = rescore(store, champ, references, require_all=not same)
        if theirs is None:
            prefix = "the dev data differs from the champion's, and " if not same else ""
            return None, None, held, f"cannot compare: {prefix}{why}"
        ours, why = rescore(store, challenger, references, who="challenger", require_all=False)
        if ours is None:
            return None, None, held, f"cannot compare: {why}"
        how = "on the same dev data" if same else f"re-scored on the new dev set ({len(references)} dialogues)"
        return ours, theirs, held, how
    ours, theirs = published_rows(store, challenger)[0], published_rows(store, champ)[0]
    if ours is None or theirs is None:
        who = "challenger" if ours is None else "champion"
        return (
            None,
            None,
            held,
            (
                f"cannot compare row by row: the {who} published no per-row dev scores; give the "
                "dev data to re-score both"
            ),
        )
    return ours, theirs, held, "on the same dev data"


def decide(
    store: storage.Storage,
    challenger: dict[str, Any],
    record: Record | None,
    policy: str,
    margin: float,
    references: dict[str, str] | None = None,
    confidence: float = PROMOTION_CONFIDENCE,
) -> Decision:
    """Apply `policy` to the challenger against the champion of `record` (no promotion happens here).

    `if-better` compares both on the same dev rows (the challenger's held-out rows when it has them): each row's
    score of their saved dev predictions against `references` (else the per-row scores they published, on the
    same dev data); it promotes only when the lower bound of the paired-bootstrap interval of challenger - champion
    (at `confidence`: `PROMOTION_CONFIDENCE` for one decision, `NIGHTLY_CONFIDENCE` for nightly ones) is above
    `margin`.
    """
    if policy not in POLICIES:
        raise RegistryError(f"unknown promotion policy {policy!r}; use one of {', '.join(POLICIES)}")
    ours = challenger["dev_score"]
    if policy == "never":
        return Decision(False, "promotion policy is `never`", ours)
    if record is None:
        return Decision(True, "no champion yet", ours)
    champ = record.champion
    if policy == "always":
        return Decision(True, "promotion policy is `always`", ours, champ["dev_score"])
    mine, theirs, held, how = _rows(store, challenger, champ, references)
    if mine is None or theirs is None:
        return Decision(False, how, ours)
    common = [f for f in mine if f in theirs]
    chosen = set(held or [])
    rows = [f for f in common if f in chosen]
    where = f"{len(rows)} held-out dev rows" if rows else f"{len(common)} dev rows"
    return _by_interval(
        [mine[f] for f in rows or common], [theirs[f] for f in rows or common], margin, f"{where}, {how}", confidence
    )


def _by_interval(
    ours: list[float], theirs: list[float], margin: float, where: str, confidence: float = PROMOTION_CONFIDENCE
) -> Decision:
    from dialsum.release.stats import paired_bootstrap

    if not ours:
        return Decision(False, f"cannot compare: the challenger and the champion share no scored dev row ({where})")
    diff = paired_bootstrap(ours, theirs, confidence=confidence)
    a, b = sum(ours) / len(ours), sum(theirs) / len(theirs)
    said = f"challenger {a:.2f} vs champion {b:.2f}: {diff.text(signed=True)} by paired bootstrap on {where}"
    if diff.low > margin:
        verdict, promoted = f"the lower bound is above the margin {margin:.2f}", True
    elif diff.mean > 0:
        verdict, promoted = (
            f"the lower bound {diff.low:+.2f} is not above the margin {margin:.2f}: within the noise",
            False,
        )
    else:
        verdict, promoted = "it does not beat the champion", False
    return Decision(promoted, f"{said}; {verdict}", a, b, comparison=diff.as_dict())


# ---------------------------------------------------------------- changing


def _commit(store: storage.Storage, record: Record, base: Record | None) -> bool:
    """Create generation `record.generation`; True if this writer won it, then move the pointer."""
    if not store.create_bytes(_history_key(record.generation), record.to_json()):
        return False
    tagged = store.read_tagged(POINTER)
    if tagged is None or Record.from_json(tagged[0], POINTER).generation < record.generation:
        _write_pointer(store, record, tagged[1] if tagged else None)
    return True


def promote(
    store: storage.Storage,
    challenger: dict[str, Any],
    policy: str = "if-better",
    margin: float = 0.0,
    references: dict[str, str] | None = None,
    confidence: float = PROMOTION_CONFIDENCE,
) -> Decision:
    """Decide, then make the challenger the champion if the decision says so and no one else changed it first."""
    base = current(store)
    decision = decide(store, challenger, base, policy, margin, references, confidence)
    if not decision.promoted:
        return Decision(**{**decision.__dict__, "champion": base.champion if base else None})
    generation = (base.generation if base else 0) + 1
    record = Record(
        generation,
        challenger,
        base.generation if base else None,
        "promote",
        decision.reason,
        comparison=decision.comparison,
    )
    if not _commit(store, record, base):
        winner = _read_record(store, generation)
        who = f"{winner.champion['run_id']}/{winner.champion['model']}" if winner else "another run"
        return Decision(
            False,
            f"another promotion ({who}) became generation {generation} first",
            decision.challenger_score,
            decision.champion_score,
            champion=winner.champion if winner else None,
            comparison=decision.comparison,
        )
    log.info(
        "champion is now %s/%s (generation %d): %s",
        challenger["run_id"],
        challenger["model"],
        generation,
        decision.reason,
    )
    return Decision(
        True,
        decision.reason,
        decision.challenger_score,
        decision.champion_score,
        generation,
        challenger,
        decision.comparison,
    )


def rollback(store: storage.Storage) -> Record:
    """Make the champion that the current one replaced the champion again (as a new generation)."""
    base = current(store)
    if base is None:
        raise RegistryError(f"no champion in {store.url}: nothing to roll back")
    if base.previous is None:
        raise RegistryError(
            f"champion {base.champion['run_id']}/{base.champion['model']} has no predecessor to roll back to"
        )
    target = _read_record(store, base.previous)
    if target is None:
        raise RegistryError(f"history generation {base.previous} is missing from {store.url}")
    record = Record(
        base.generation + 1,
        target.champion,
        target.previous,
        "rollback",
        f"rolled back from {base.champion['run_id']}/{base.champion['model']} (generation {base.generation})",
    )
    if not _commit(store, record, base):
        raise RegistryError("the champion changed while rolling back; run `dialsum champion show` and try again")
    return record
