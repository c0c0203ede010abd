"""Combine the models of one run into one submission, choosing the strategy that scores best on dev.

Strategies:

* `best_single`: every prediction of the model with the highest dev score (ties: the first name).
* `consensus`: per dialogue, the candidate that agrees most with the other models' candidates. The
  agreement of model m's candidate c_m is

      agreement(m) = sum_{k != m} w_k * similarity(c_m, c_k) / sum_{k != m} w_k

  where `similarity` is the competition score of one summary against another (`metric.similarity`,
  0..100) and w_k = dev_k / sum_j dev_j is model k's dev score normalised over all models (uniform
  when every dev score is 0). The weights of the others are renormalised per candidate, so agreement
  stays on 0..100 whichever model is left out. Ties go to the model with the higher weight, then the
  first name. With one model, consensus is that model; with two, both candidates agree equally and
  the higher-weighted model wins, so consensus equals best single.

Both strategies are scored on the dev dialogues that every model predicted and have a reference (debug
runs predict a slice); the better one is chosen, and best single wins ties.

`publish_ensemble` reads each model's published metrics and predictions back from storage, verified
against the model's manifest, and publishes the ensemble as the model `ensemble` of the same run.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from dialsum import metric, storage
from dialsum.data import load_splits, read_submission, write_submission
from dialsum.errors import StorageError

ENSEMBLE = "ensemble"
BEST_SINGLE = "best_single"
CONSENSUS = "consensus"
SPLITS = ("dev", "test")
METRICS_FILE = "metrics.json"

Predictions = dict[str, str]
"""fname -> summary."""
Candidates = dict[str, dict[str, Predictions]]
"""model -> split -> fname -> summary."""


@dataclass(frozen=True)
class EnsembleResult:
    """The chosen strategy, its predictions per split, and the scores it was chosen on (dev, 0..100)."""

    choice: str
    best_model: str
    predictions: dict[str, Predictions]
    dev_scores: dict[str, float]
    weights: dict[str, float]
    model_scores: dict[str, float]
    strategy_scores: dict[str, float]
    consensus_picks: dict[str, int]
    rows: dict[str, int]

    @property
    def dev_score(self) -> float:
        return self.strategy_scores[self.choice]

    def summary(self) -> dict[str, Any]:
        """Everything but the predictions, JSON-ready."""
        data = asdict(self)
        data.pop("predictions")
        return {**data, "dev_score": self.dev_score}


@dataclass(frozen=True)
class ModelOutputs:
    """A published model run as read back from storage."""

    model: str
    metrics: dict[str, Any]
    predictions: dict[str, Predictions]
    location: str


@dataclass(frozen=True)
class PublishedEnsemble:
    result: EnsembleResult
    report: str
    location: str


# ---------------------------------------------------------------- strategies


def normalised_weights(dev_scores: dict[str, float]) -> dict[str, float]:
    """Dev scores scaled to sum to 1; uniform when they sum to 0."""
    total = sum(max(score, 0.0) for score in dev_scores.values())
    if total <= 0:
        return {m: 1 / len(dev_scores) for m in dev_scores}
    return {m: max(score, 0.0) / total for m, score in dev_scores.items()}


def best_model(dev_scores: dict[str, float]) -> str:
    """The model with the highest dev score; ties go to the first name."""
    return max(sorted(dev_scores), key=lambda m: dev_scores[m])


def agreement(model: str, options: dict[str, str], weights: dict[str, float]) -> float:
    """Weighted mean similarity of `model`'s candidate to every other model's candidate (0..100)."""
    others = [k for k in options if k != model]
    total = sum(weights[k] for k in others)
    share = {k: weights[k] / total if total > 0 else 1 / len(others) for k in others}
    return sum(share[k] * metric.similarity(options[model], options[k]) for k in others)


def consensus_pick(options: dict[str, str], weights: dict[str, float]) -> str:
    """The model whose candidate agrees most with the others (one option: that model)."""
    if len(options) == 1:
        return next(iter(options))
    support = {m: agreement(m, options, weights) for m in options}
    return max(sorted(options), key=lambda m: (support[m], weights[m]))


def consensus(split: dict[str, Predictions], fnames: list[str], weights: dict[str, float]) -> dict[str, str]:
    """fname -> the model whose candidate consensus selects, for each fname."""
    return {f: consensus_pick({m: preds[f] for m, preds in split.items()}, weights) for f in fnames}


def common_fnames(split: dict[str, Predictions], order: list[str] | None = None) -> list[str]:
    """The fnames every model predicted, in `order` (default: the first model's order)."""
    models = list(split.values())
    if not models:
        return []
    order = order if order is not None else list(models[0])
    return [f for f in order if all(f in preds for preds in models)]


def dev_score(predictions: Predictions, references: dict[str, str], fnames: list[str]) -> float:
    return metric.score([predictions[f] for f in fnames], [references[f] for f in fnames])["score"]


def _split(candidates: Candidates, name: str) -> dict[str, Predictions]:
    return {m: splits[name] for m, splits in candidates.items() if name in splits}


def _strategy_predictions(
    choice: str, candidates: Candidates, best: str, weights: dict[str, float]
) -> dict[str, Predictions]:
    """Predictions of `choice` for every split, on the fnames every model predicted."""
    out = {}
    for name in SPLITS:
        split = _split(candidates, name)
        if len(split) != len(candidates):
            continue
        fnames = common_fnames(split)
        picks = consensus(split, fnames, weights) if choice == CONSENSUS else dict.fromkeys(fnames, best)
        out[name] = {f: split[picks[f]][f] for f in fnames}
    return out


def build_ensemble(candidates: Candidates, dev_scores: dict[str, float], references: dict[str, str]) -> EnsembleResult:
    """Score best single and consensus on dev against `references` and keep the better (ties: best single)."""
    if not candidates:
        raise ValueError("an ensemble needs at least one model")
    dev = _split(candidates, "dev")
    if len(dev) != len(candidates):
        raise ValueError(f"no dev predictions from {', '.join(sorted(set(candidates) - set(dev)))}")
    fnames = common_fnames(dev, list(references))
    if not fnames:
        raise ValueError("the models share no dev dialogue that has a reference")
    scores = {m: dev_scores[m] for m in sorted(candidates)}
    weights, best = normalised_weights(scores), best_model(scores)
    picks = consensus(dev, fnames, weights)
    strategy_scores = {
        BEST_SINGLE: dev_score(dev[best], references, fnames),
        CONSENSUS: dev_score({f: dev[picks[f]][f] for f in fnames}, references, fnames),
    }
    choice = CONSENSUS if strategy_scores[CONSENSUS] > strategy_scores[BEST_SINGLE] else BEST_SINGLE
    predictions = _strategy_predictions(choice, candidates, best, weights)
    return EnsembleResult(
        choice=choice, best_model=best, predictions=predictions, dev_scores=scores, weights=weights,
        model_scores={m: dev_score(dev[m], references, fnames) for m in scores}, strategy_scores=strategy_scores,
        consensus_picks={m: sum(p == m for p in picks.values()) for m in scores},
        rows={name: len(preds) for name, preds in predictions.items()} | {"dev_scored": len(fnames)},
    )


def combine(choice: str, candidates: Candidates, dev_scores: dict[str, float]) -> dict[str, Predictions]:
    """Apply a chosen strategy to new candidates (e.g. the champion's members on new data), per split."""
    if choice not in (BEST_SINGLE, CONSENSUS):
        raise ValueError(f"unknown ensemble strategy {choice!r}")
    scores = {m: dev_scores[m] for m in sorted(candidates)}
    return _strategy_predictions(choice, candidates, best_model(scores), normalised_weights(scores))


def read_predictions(folder: Path) -> dict[str, Predictions]:
    """split -> predictions from `folder/<split>.csv`, for the splits present."""
    return {s: read_submission(folder / f"{s}.csv", normalized=False) for s in SPLITS if (folder / f"{s}.csv").is_file()}


# ---------------------------------------------------------------- storage


def _key(run_id: str, model: str, rel: str = "") -> str:
    return storage.run_key(run_id, model, rel)


def fetch_outputs(run_id: str, model: str, store: storage.Storage, dest: Path) -> dict[str, Path]:
    """Download a published run's metrics and predictions into `dest`, each verified against its manifest."""
    manifest = storage.read_manifest(run_id, model, store)
    if manifest is None:
        raise StorageError(f"{run_id}/{model} is not published in {store.url}")
    entries = {e["path"]: e for e in manifest["files"]}
    wanted = [METRICS_FILE] + [f"predictions/{split}.csv" for split in SPLITS]
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
    """A published model's metrics and predictions, read back from storage and verified."""
    with tempfile.TemporaryDirectory(prefix="dialsum-outputs-") as tmp:
        files = fetch_outputs(run_id, model, store, Path(tmp))
        metrics = json.loads(files[METRICS_FILE].read_text(encoding="utf-8"))
        csvs = {s: files.get(f"predictions/{s}.csv") for s in SPLITS}
        predictions = {s: read_submission(path, normalized=False) for s, path in csvs.items() if path is not None}
    return ModelOutputs(model, metrics, predictions, store.location(_key(run_id, model)))


def render_report(run_id: str, result: EnsembleResult) -> str:
    """A markdown report: the choice, and each model's and strategy's dev score."""
    lines = [
        f"# Ensemble for run `{run_id}`", "",
        f"Chosen strategy: **{result.choice}** with dev score **{result.dev_score:.2f}** "
        f"(best single model: `{result.best_model}`; {result.rows['dev_scored']} dev dialogues scored).", "",
        "| model | reported dev score | dev score (scored rows) | weight | consensus picks |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {m} | {result.dev_scores[m]:.2f} | {result.model_scores[m]:.2f} | {result.weights[m]:.3f} "
        f"| {result.consensus_picks[m]} |"
        for m in result.dev_scores
    ]
    lines += ["", "| strategy | dev score |", "|---|---:|"]
    lines += [f"| {name} | {score:.2f} |" for name, score in result.strategy_scores.items()]
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
    run_id: str, store: storage.Storage, models: list[str], data_dir: Path | None = None,
    sources: dict[str, str] | None = None, attachments: Callable[[Path, EnsembleResult, list[ModelOutputs]], None] | None = None,
) -> PublishedEnsemble:
    """Ensemble the published runs of `models` and publish it under `<run_id>/ensemble/`.

    A model is read from `<run_id>/<model>/`, or from the run `sources[model]` names when it was not
    retrained (its data, config and code were unchanged). `attachments(folder, result, outputs)` may add
    files (plots) to the ensemble folder before it is published.
    """
    sources = sources or {}
    outputs = [read_outputs(sources.get(m, run_id), m, store) for m in models]
    references = {ex.fname: ex.summary for ex in load_splits(data_dir, splits=("dev",))["dev"]}
    result = build_ensemble(
        {o.model: o.predictions for o in outputs}, {o.model: o.metrics["dev"]["score"] for o in outputs}, references
    )
    with tempfile.TemporaryDirectory(prefix="dialsum-ensemble-") as tmp:
        from dialsum.data.source import dev_fingerprint

        facts = {"dev_sha256": dev_fingerprint(data_dir), "sources": {o.model: sources.get(o.model, run_id) for o in outputs}}
        report = write_ensemble(Path(tmp), run_id, result, facts)
        if attachments is not None:
            attachments(Path(tmp), result, outputs)
        extra = {"type": ENSEMBLE, "choice": result.choice, "models": sorted(result.dev_scores), **facts}
        published = storage.publish(Path(tmp), run_id, ENSEMBLE, storage=store, extra=extra)
    return PublishedEnsemble(result, report, published.url)
