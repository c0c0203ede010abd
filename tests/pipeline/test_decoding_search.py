"""`tune-decoding` on a saved tiny run: trials scored on a search part of dev, the winner and the run's own setting
scored once on the held-out part, outputs that load as an overlay."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from dialsum.config import load_model_config, overlay_overrides
from dialsum.data import holdout, load_splits, sample_dir
from dialsum.pipeline import run_model
from dialsum.pipeline.decoding_search import format_summary, recommendation, rounded, tune_decoding

SPACE = {
    "params": {
        "generation.num_beams": {"choices": [1, 2]},
        "generation.max_new_tokens": {"choices": [8, 16]},
        "generation.length_penalty": {"low": 0.8, "high": 1.2},
    }
}


def small_dev(folder: Path) -> Path:
    rows = list(csv.DictReader(open(sample_dir() / "dev.csv", encoding="utf-8")))[:12]
    folder.mkdir(parents=True)
    with open(folder / "dev.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.mark.slow
def test_tune_decoding_searches_on_one_part_of_dev_and_reports_on_the_other(tmp_path: Path) -> None:
    run = run_model(
        "tiny-bart", run_id="dec-1", debug=True, publish=False, force=True, overrides=["generation.max_new_tokens=8"]
    )  # short summaries: a cheap search
    data = small_dev(tmp_path / "data")
    summary = tune_decoding(run.run_dir, data_dir=data, space=SPACE, trials=3, rows=4, seed=1, out_dir=tmp_path / "dec")

    dev = [ex.fname for ex in load_splits(data, splits=("dev",))["dev"]]
    recorded = json.loads((run.run_dir / "metrics.json").read_text())["dev_held_out"]["split"]
    split = holdout.DevSplit.from_record(recorded)  # the run's own split: the sampler's seed 1 never moves it
    search, held = split.parts(dev)
    assert summary["search_rows"] == min(4, len(search)) and summary["heldout_rows"] == len(held)
    assert summary["split"] == split.record(dev) and summary["sampler_seed"] == 1
    assert summary["trials"] == 3
    cfg = load_model_config(str(run.run_dir / "config.yaml"))
    assert summary["own"]["params"]["generation.num_beams"] == cfg.generation.num_beams
    assert summary["gain"]["interval"][0] <= summary["gain"]["mean"] <= summary["gain"]["interval"][1]
    files = {p.name for p in (tmp_path / "dec").iterdir()}
    assert files == {"decoding.yaml", "trials.csv", "decoding.json"}
    overlay = overlay_overrides(tmp_path / "dec" / "decoding.yaml")
    tuned = load_model_config(str(run.run_dir / "config.yaml"), overlay)
    assert set(yaml.safe_load((tmp_path / "dec" / "decoding.yaml").read_text())) == {"generation"}
    assert json.loads((tmp_path / "dec" / "decoding.json").read_text())["best"] == summary["best"]
    assert "held-out dev" in format_summary(summary)
    penalty = summary["best"]["params"]["generation.length_penalty"]
    assert penalty == float(f"{penalty:.3g}")  # 1.14, never 1.1448831829968968
    recommended = summary["best"] if summary["recommended"]["use"] == "best" else summary["own"]
    assert tuned.generation.num_beams == recommended["params"]["generation.num_beams"]


def test_a_setting_is_recommended_only_with_a_held_out_gain_beyond_the_noise() -> None:
    assert recommendation(False, 0.0)["use"] == "own"
    assert recommendation(True, 0.0)["use"] == "own"  # +0.00 (+0.00 to +0.00) is no gain
    assert recommendation(True, -0.4)["use"] == "own"
    assert recommendation(True, 0.3)["use"] == "best"
    assert rounded({"generation.length_penalty": 1.1448831829968968, "generation.num_beams": 4}) == {
        "generation.length_penalty": 1.14,
        "generation.num_beams": 4,
    }
    summary = {
        "trials": 3,
        "search_rows": 4,
        "heldout_rows": 6,
        "location": "dec",
        "best": {"trial": 2, "params": {"generation.length_penalty": 1.14}, "heldout_score": 10.0},
        "own": {"params": {"generation.length_penalty": 1.0}, "search_score": 9.0, "heldout_score": 10.0},
        "gain": {"mean": 0.0, "interval": [0.0, 0.0]},
        "recommended": recommendation(True, 0.0),
    }
    text = format_summary(summary)
    assert "gain +0.00 (95% CI [+0.00, +0.00])" in text
    assert "recommended: keep the run's own setting: the best setting found gains nothing beyond the noise" in text
