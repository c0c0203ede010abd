"""Combine the models of one run into one submission: read their published outputs, choose a strategy on one half
of dev and report it on the other (`strategies`), and publish the result as the model `ensemble` of the run.

`publish_ensemble` reads each model's published metrics, predictions and candidates back from storage, verified
against the model's manifest, and publishes predictions/<split>.csv, `ensemble.json` (both halves of every
strategy, the chosen strategy's per-row dev scores and held-out rows, the N-scaling table) and `report.md`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dialsum import storage
from dialsum.data import (
    candidates_path,
    load_splits,
    read_candidates,
    read_submission,
    write_submission,
)
from dialsum.errors import StorageError
from dialsum.release import report as plots
from dialsum.release.strategies import (  # noqa: F401  (the public names of ensembling live here too)
    BEST_SINGLE,
    CONSENSUS,
    MBR,
    SPLITS,
    Candidates,
    EnsembleResult,
    NBest,
    Predictions,
    agreement,
    best_model,
    build_ensemble,
    combine,
    common_fnames,
    consensus,
    consensus_pick,
    normalised_weights,
)

ENSEMBLE = "ensemble"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class ModelOutputs:
    """A published model run as read back from storage."""

    model: str
    metrics: dict[str, Any]
    predictions: dict[str, Predictions]
    location: str
    candidates: dict[str, dict[str, list[str]]] | None = None


@dataclass(frozen=True)
class PublishedEnsemble:
    result: EnsembleResult
    report: str
    location: str


@dataclass(frozen=True)
class EnsembleSummary:
    """A run's published ensemble as its train-all summary reports it (the summary's `ensemble`): the choice, its
    full-dev and held-out scores, every strategy on both halves of dev (`strategies`), the dev split (`split`), the
    strategies' (`scores`) and models' (`model_scores`) full-dev scores, where it is and its plots. Built from the
    ensemble's own summary (`ensemble.json`) only (`summary_of`), whether just published or read back."""

    choice: str
    best_model: str
    dev_score: float | None
    dev_rows: int | None
    held_out_score: float | None
    strategies: dict[str, dict[str, Any]]
    split: dict[str, Any]
    scores: dict[str, float] | None
    location: str
    model_scores: dict[str, float] | None
    dev_sha256: str | None
    plot: str | None
    scaling_plot: str | None = None

    @property
    def headline(self) -> str:
        return headline(self.as_dict(with_headline=False))

    def as_dict(self, with_headline: bool = True) -> dict[str, Any]:
        """JSON-ready, in the summary's key order (`scaling_plot` only with an N-scaling plot), with the headline."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if data["scaling_plot"] is None:
            data.pop("scaling_plot")
        return {**data, "headline": self.headline} if with_headline else data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnsembleSummary:
        """Read back from a train-all summary's `ensemble` (its headline is derived again)."""
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


def summary_of(run_id: str, store: storage.Storage, data: Mapping[str, Any], location: str) -> EnsembleSummary:
    """The summary of the ensemble of `run_id` from its ensemble.json (`EnsembleResult.summary()` and the facts
    written beside it), published at `location`."""

    def share(name: str) -> str | None:
        return store.share_url(storage.run_key(run_id, ENSEMBLE, name))

    return EnsembleSummary(
        choice=data.get("choice"),
        best_model=data.get("best_model"),
        dev_score=data.get("dev_score"),
        dev_rows=(data.get("rows") or {}).get("dev_scored"),
        held_out_score=data.get("held_out_score"),
        strategies=data.get("strategies") or {},
        split=data.get("split") or {},
        scores=data.get("strategy_scores"),
        location=location,
        model_scores=data.get("dev_scores"),
        dev_sha256=data.get("dev_sha256"),
        plot=share(plots.PLOT),
        scaling_plot=share(plots.SCALING_PLOT) if data.get("scaling") else None,
    )


def published_summary(run_id: str, store: storage.Storage) -> EnsembleSummary | None:
    """The summary of the ensemble published under `<run_id>/ensemble/`; None when there is none."""
    if storage.read_manifest(run_id, ENSEMBLE, store) is None:
        return None
    data = json.loads(store.read_bytes(storage.run_key(run_id, ENSEMBLE, "ensemble.json")) or b"{}")
    return summary_of(run_id, store, data, store.location(storage.run_key(run_id, ENSEMBLE)))


def read_predictions(folder: Path) -> dict[str, Predictions]:
    """split -> predictions from `folder/<split>.csv`, for the splits present."""
    return {
        s: read_submission(folder / f"{s}.csv", normalized=False) for s in SPLITS if (folder / f"{s}.csv").is_file()
    }


def read_nbest(folder: Path) -> dict[str, dict[str, list[str]]]:
    """split -> fname -> candidates from `folder/<split>_candidates.jsonl`, for the splits present."""
    return {s: read_candidates(candidates_path(folder, s)) for s in SPLITS if candidates_path(folder, s).is_file()}


# ---------------------------------------------------------------- storage


def _key(run_id: str, model: str, rel: str = "") -> str:
    return storage.run_key(run_id, model, rel)


def fetch_outputs(run_id: str, model: str, store: storage.Storage, dest: Path) -> dict[str, Path]:
    """Download a published run's metrics, predictions and candidates into `dest`, each verified against its
    manifest."""
    manifest = storage.read_manifest(run_id, model, store)
    if manifest is None:
        raise StorageError(f"{run_id}/{model} is not published in {store.url}")
    entries = {e["path"]: e for e in manifest["files"]}
    wanted = [METRICS_FILE] + [
        f"predictions/{split}{kind}" for split in SPLITS for kind in (".csv", "_candidates.jsonl")
    ]
    fetched = {}
    for rel in (r for r in wanted if r in entries):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(_key(run_id, model, rel), target)
        if target.stat().st_size != entries[rel]["size"] or storage.sha256_file(target) != entries[rel]["sha256"]:
            raise StorageError(f"checksum mismatch for {rel} of {run_id}/{model}: the stored file was changed")
        fetched[rel] = target
    if METRICS_FILE not in fetched:
        raise StorageError(f"{run_id}/{model} has no {METRICS_FILE}")
    return fetched


def read_outputs(run_id: str, model: str, store: storage.Storage) -> ModelOutputs:
    """A published model's metrics, predictions and candidates (None without any), read back and verified."""
    with tempfile.TemporaryDirectory(prefix="dialsum-outputs-") as tmp:
        files = fetch_outputs(run_id, model, store, Path(tmp))
        metrics = json.loads(files[METRICS_FILE].read_text(encoding="utf-8"))
        predictions = read_predictions(Path(tmp) / "predictions")
        nbest = read_nbest(Path(tmp) / "predictions") or None
    return ModelOutputs(model, metrics, predictions, store.location(_key(run_id, model)), nbest)


def _num(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")


def _ci(low: float | None, high: float | None, signed: bool = False) -> str:
    return "-" if low is None else f"{_num(low, signed)} to {_num(high, signed)}"


def headline(summary: dict[str, Any]) -> str:
    """The chosen strategy's held-out score with its interval and gain over best single, then its full-dev score."""
    choice, split = summary["choice"], summary.get("split") or {}
    row = (summary.get("strategies") or {}).get(choice) or {}
    full = f"full-dev score {_num(summary['dev_score'])}"
    if row.get("held_out") is None:
        return f"{full}, measured on the rows that chose it (no held-out rows: {split.get('selection', '?')} dev rows)"
    gain = (
        ""
        if choice == BEST_SINGLE
        else f", {_num(row['vs_best_single'], True)} "
        f"(95% CI {_ci(row['vs_best_single_low'], row['vs_best_single_high'], True)}) over best single"
    )
    return (
        f"held-out score {_num(row['held_out'])} (95% CI {_ci(row['held_out_low'], row['held_out_high'])}) on "
        f"{split['held_out']} dev rows that did not choose it{gain}; chosen on {split['selection']} other rows; "
        f"{full}"
    )


def strategy_lines(summary: dict[str, Any]) -> list[str]:
    """Plain-text table of every strategy's selection-half, held-out (with interval) and full-dev scores."""
    table = [["strategy", "selection", "held-out", "held-out 95% CI", "vs best_single", "full dev"]]
    for name, row in (summary.get("strategies") or {}).items():
        mark = " *" if name == summary["choice"] else ""
        label = f"{name} ({summary['best_model']})" if name == BEST_SINGLE else name
        table.append(
            [
                label + mark,
                _num(row["selection"]),
                _num(row["held_out"]),
                _ci(row.get("held_out_low"), row.get("held_out_high")),
                "-" if name == BEST_SINGLE else _num(row.get("vs_best_single"), True),
                _num(row["full"]),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]


def _scaling_lines(scaling: dict[str, Any]) -> list[str]:
    series = scaling["series"]
    names = [MBR] + [m for m in series if m != MBR]
    lines = [
        "",
        f"MBR over the first N candidates, dev score on {scaling['rows']} dev rows (95% CI):",
        "",
        "| N | " + " | ".join("pooled mbr" if n == MBR else n for n in names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for n in scaling["sizes"]:
        cells = []
        for name in names:
            point = next((p for p in series.get(name, []) if p["n"] == n), None)
            cells.append("-" if point is None else f"{point['score']:.2f} ({point['low']:.2f} to {point['high']:.2f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def render_report(run_id: str, result: EnsembleResult) -> str:
    """A markdown report: the choice with its held-out score, each model, each strategy on both halves, N-scaling."""
    summary = result.summary()
    lines = [
        f"# Ensemble for run `{run_id}`",
        "",
        f"Chosen strategy: **{result.choice}**. {headline(summary)}. Best single model: `{result.best_model}`; "
        f"{result.rows['dev_scored']} dev dialogues scored, split by fname (seed {result.split.get('seed')}) into "
        f"{result.split.get('selection')} that choose and {result.split.get('held_out')} that report.",
        "",
        "| model | reported dev score | dev score (scored rows) | weight | candidates | consensus picks |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {m} | {result.dev_scores[m]:.2f} | {result.model_scores[m]:.2f} | {result.weights[m]:.3f} "
        f"| {result.candidates.get(m, 1)} | {result.consensus_picks[m]} |"
        for m in result.dev_scores
    ]
    lines += [
        "",
        "| strategy | selection half | held-out half | held-out 95% CI | held-out vs best single (95% CI) | full dev |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result.strategies.items():
        label = f"**{name}**" if name == result.choice else name
        diff = "-"
        if name != BEST_SINGLE and row.get("vs_best_single") is not None:
            interval = _ci(row["vs_best_single_low"], row["vs_best_single_high"], True)
            diff = f"{_num(row['vs_best_single'], True)} ({interval})"
        lines.append(
            f"| {label} | {_num(row['selection'])} | {_num(row['held_out'])} "
            f"| {_ci(row.get('held_out_low'), row.get('held_out_high'))} | {diff} | {_num(row['full'])} |"
        )
    if result.scaling:
        lines += _scaling_lines(result.scaling)
    return "\n".join(lines) + "\n"


def write_ensemble(folder: Path, run_id: str, result: EnsembleResult, extra: dict[str, Any] | None = None) -> str:
    """Write predictions/<split>.csv, ensemble.json and report.md into `folder`; returns the report."""
    for split, preds in result.predictions.items():
        write_submission(folder / "predictions" / f"{split}.csv", list(preds), list(preds.values()))
    summary = {"run_id": run_id, **result.summary(), **(extra or {})}
    (folder / "ensemble.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    report = render_report(run_id, result)
    (folder / "report.md").write_text(report, encoding="utf-8")
    return report


def publish_ensemble(
    run_id: str,
    store: storage.Storage,
    models: list[str],
    data_dir: Path | None = None,
    sources: dict[str, str] | None = None,
    attachments: Callable[[Path, EnsembleResult, list[ModelOutputs]], None] | None = None,
    metric_weights: list[float] | None = None,
    model_weights: dict[str, float] | None = None,
) -> PublishedEnsemble:
    """Ensemble the published runs of `models` and publish it under `<run_id>/ensemble/`.

    A model is read from `<run_id>/<model>/`, or from the run `sources[model]` names when it was not
    retrained (its data, config and code were unchanged). `attachments(folder, result, outputs)` may add
    files (plots) to the ensemble folder before it is published. `metric_weights` and `model_weights` go to
    `build_ensemble`.
    """
    sources = sources or {}
    outputs = [read_outputs(sources.get(m, run_id), m, store) for m in models]
    references = {ex.fname: ex.summary for ex in load_splits(data_dir, splits=("dev",))["dev"]}
    result = build_ensemble(
        {o.model: o.predictions for o in outputs},
        {o.model: o.metrics["dev"]["score"] for o in outputs},
        references,
        nbest={o.model: o.candidates for o in outputs if o.candidates},
        metric_weights=metric_weights,
        model_weights=model_weights,
    )
    with tempfile.TemporaryDirectory(prefix="dialsum-ensemble-") as tmp:
        from dialsum.data.source import dev_fingerprint

        facts = {
            "dev_sha256": dev_fingerprint(data_dir),
            "sources": {o.model: sources.get(o.model, run_id) for o in outputs},
        }
        report = write_ensemble(Path(tmp), run_id, result, facts)
        if attachments is not None:
            attachments(Path(tmp), result, outputs)
        extra = {"type": ENSEMBLE, "choice": result.choice, "models": sorted(result.dev_scores), **facts}
        published = storage.publish(Path(tmp), run_id, ENSEMBLE, storage=store, extra=extra)
    return PublishedEnsemble(result, report, published.url)
