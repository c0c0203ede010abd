"""The ensemble summary is one record: the summary of an ensemble just published and the one read back from
storage are equal, key for key, and its JSON keeps the keys the train-all summary has always had."""

from __future__ import annotations

import json
from pathlib import Path

from test_ensemble import SAMPLE, publish_model

from dialsum.data import source
from dialsum.release import ensemble
from dialsum.release.ensemble import EnsembleSummary, published_summary, summary_of
from dialsum.storage import LocalStorage

KEYS = [
    "choice",
    "best_model",
    "dev_score",
    "dev_rows",
    "held_out_score",
    "strategies",
    "split",
    "scores",
    "location",
    "model_scores",
    "dev_sha256",
    "plot",
]


def test_the_summary_just_published_equals_the_one_read_back(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    words = {f: SAMPLE[f].split() for f in SAMPLE}
    for model, shift in (("x", 0), ("y", 1)):
        nbest = {f: [" ".join(w[:k] + w[k + 1 :]) for k in range(shift, shift + 3)] for f, w in words.items()}
        publish_model(store, tmp_path / "runs", "r1", model, {f: c[0] for f, c in nbest.items()}, 40.0, nbest)
    published = ensemble.publish_ensemble("r1", store, ["x", "y"], None)
    facts = {**published.result.summary(), "dev_sha256": source.dev_fingerprint(None)}
    fresh = summary_of("r1", store, facts, published.location)
    back = published_summary("r1", store)
    assert back == fresh and published_summary("r2", store) is None
    data = fresh.as_dict()
    assert list(data) == [*KEYS, "scaling_plot", "headline"] and json.loads(json.dumps(data)) == data
    assert data["strategies"] == published.result.strategies
    assert data["split"]["held_out"] == len(published.result.held_out)
    assert data["headline"] == ensemble.headline(published.result.summary()) == fresh.headline
    assert EnsembleSummary.from_dict(data) == fresh


def test_without_candidates_there_is_no_scaling_plot(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    for model, score in (("x", 40.0), ("y", 30.0)):
        publish_model(store, tmp_path / "runs", "r1", model, dict(SAMPLE), score)
    ensemble.publish_ensemble("r1", store, ["x", "y"], None)
    assert list(published_summary("r1", store).as_dict()) == [*KEYS, "headline"]
