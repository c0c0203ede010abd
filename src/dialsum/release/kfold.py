"""K-fold results from published fold runs: out-of-fold predictions and their scores, and the fold ensemble.

Fold i's run predicted its `test.csv`: the held-out fold's dialogues (the out-of-fold predictions) followed by the
real test rows; it also predicted the real dev set. The pooled OOF score (with a bootstrap interval) and each
fold's OOF score measure the config on every train row; the fold ensemble (`ensemble.build_ensemble` over the
fold models: best single or consensus, whichever scores better on the selection part) gives the score and the test
predictions of the K models together: its strategy is chosen on the selection part of the one dev split
(`data.holdout`) and its score is reported on the held-out part, with the split it was measured on.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from dialsum import metric
from dialsum.release.ensemble import EnsembleResult, ModelOutputs, build_ensemble
from dialsum.release.stats import bootstrap_interval


@dataclass(frozen=True)
class KFoldResult:
    oof: dict[str, tuple[int, str]]  # fname -> (fold, prediction), in train order
    summary: dict[str, Any]
    ensemble: EnsembleResult | None


def fold_name(fold: int) -> str:
    return f"fold-{fold}"


def assemble(
    assignment: dict[str, int],
    outputs: dict[int, ModelOutputs],
    references: dict[str, str],
    dev_references: dict[str, str],
    seed: int = 0,
) -> KFoldResult:
    """OOF predictions and scores from the completed folds' `outputs`, and their ensemble."""
    k = max(assignment.values()) + 1
    oof = {
        f: (fold, outputs[fold].predictions.get("test", {})[f])
        for f, fold in assignment.items()
        if fold in outputs and f in outputs[fold].predictions.get("test", {})
    }
    per_fold = []
    for fold in range(k):
        rows = [f for f, (i, _) in oof.items() if i == fold]
        run = outputs.get(fold)
        per_fold.append(
            {
                "fold": fold,
                "rows": sum(1 for i in assignment.values() if i == fold),
                "oof_rows": len(rows),
                "oof_score": _score(oof, rows, references),
                "dev_score": run.metrics["dev"]["score"] if run else None,
                "location": run.location if run else None,
            }
        )
    fnames = list(oof)
    pooled = _score(oof, fnames, references)
    rows = metric.row_scores([oof[f][1] for f in fnames], [references[f] for f in fnames]) if fnames else []
    interval = bootstrap_interval(rows, seed=seed) if rows else None
    ensemble = None
    if outputs:
        candidates = {
            fold_name(i): {
                "dev": o.predictions.get("dev", {}),
                "test": {f: p for f, p in o.predictions.get("test", {}).items() if f not in assignment},
            }
            for i, o in outputs.items()
        }
        ensemble = build_ensemble(
            candidates, {fold_name(i): o.metrics["dev"]["score"] for i, o in outputs.items()}, dev_references
        )
    summary = {
        "k": k,
        "train_rows": len(assignment),
        "oof_rows": len(oof),
        "oof_score": pooled,
        "oof_interval": [round(interval.low, 4), round(interval.high, 4)] if interval else None,
        "interval": "95% percentile bootstrap over rows",
        "folds": per_fold,
        "completed_folds": sorted(outputs),
        "ensemble": None
        if ensemble is None
        else {
            "choice": ensemble.choice,
            "held_out_score": ensemble.held_out_score,
            "held_out_interval": _held_interval(ensemble),
            "split": ensemble.split,
            "full_dev_score": ensemble.dev_score,
            "best_fold": ensemble.best_model,
            "strategies": ensemble.strategies,
            "test_rows": len(ensemble.predictions.get("test", {})),
        },
    }
    return KFoldResult(oof, summary, ensemble)


def _held_interval(ensemble: EnsembleResult) -> list[float] | None:
    row = ensemble.strategies.get(ensemble.choice) or {}
    return None if row.get("held_out_low") is None else [round(row["held_out_low"], 4), round(row["held_out_high"], 4)]


def _score(oof: dict[str, tuple[int, str]], fnames: list[str], references: dict[str, str]) -> float | None:
    if not fnames:
        return None
    return round(metric.score([oof[f][1] for f in fnames], [references[f] for f in fnames])["score"], 4)


def oof_csv(result: KFoldResult) -> bytes:
    """oof.csv: fname, fold and the out-of-fold prediction of every predicted train row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["fname", "fold", "summary"])
    writer.writerows([f, fold, prediction] for f, (fold, prediction) in result.oof.items())
    return out.getvalue().encode("utf-8")
