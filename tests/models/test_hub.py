"""Pinned bases, offline (a LoRA profile on a hub-layout cache): a run records the hub commit its base resolved
to, a retry keeps it, and `predict --run` and the champion load that commit even after the hub's `main` moved to
other weights."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

from dialsum import pipeline, storage
from dialsum.config import load_model_config
from dialsum.data import sample_dir
from dialsum.errors import ConfigError
from dialsum.models import checkpoint_source, hub
from dialsum.pipeline import phases

REPO = "dialsum-test/tiny-base"
COMMITS = ("a" * 40, "b" * 40)  # what main points at when the run trains, and after an upstream change


def _hub_cache(root: Path) -> Path:
    """A hub-layout cache of REPO: snapshots of two commits (the same tokenizer, different weights), main at the
    first."""
    base = checkpoint_source(load_model_config("tiny-llama"))
    repo = root / f"models--{REPO.replace('/', '--')}"
    for i, commit in enumerate(COMMITS):
        snapshot = repo / "snapshots" / commit
        shutil.copytree(base, snapshot)
        weights = load_file(snapshot / "model.safetensors")
        generator = torch.Generator().manual_seed(i)
        save_file(
            {k: torch.randn(v.shape, generator=generator) * 0.05 if v.ndim == 2 else v for k, v in weights.items()},
            snapshot / "model.safetensors",
            metadata={"format": "pt"},
        )
    _move_main(root, COMMITS[0])
    return root


def _move_main(root: Path, commit: str) -> None:
    refs = root / f"models--{REPO.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(commit)


def _small_data(folder: Path) -> Path:
    for split, rows in (("train", 8), ("dev", 4), ("test", 4)):
        with open(sample_dir() / f"{split}.csv", encoding="utf-8", newline="") as fh:
            table = list(csv.reader(fh))
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as fh:
            csv.writer(fh).writerows(table[: rows + 1])
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = _hub_cache(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_revision_resolves_to_its_snapshot_commit_offline(hub_cache):
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    assert hub.resolve_commit(REPO, "main") == hub.resolve_commit(REPO, None) == COMMITS[0]
    assert hub.resolve_commit(REPO, COMMITS[1]) == COMMITS[1]
    assert hub.resolve_commit(str(hub_cache), "main") is None  # a local folder has no commit
    with pytest.raises(ConfigError, match="cannot resolve dialsum-test/absent@main"):
        hub.resolve_commit("dialsum-test/absent", "main")


@pytest.mark.slow
def test_a_run_predicts_on_the_base_commit_it_trained_on_after_main_moved(hub_cache, tmp_path, monkeypatch):
    profile = tmp_path / "pinned.yaml"
    profile.write_text(
        f"type: causal_lm\nmodel: {REPO}\nrevision: main\nstop_tokens: ['<|eot_id|>']\n"
        "max_prompt_length: 320\nquantization: null\ntraining: {epochs: 1, batch_size: 8, learning_rate: 5.0e-3, "
        "precision: fp32, gradient_checkpointing: false, eval_score_rows: 2}\n"
        "generation: {batch_size: 8, max_new_tokens: 16}\n",
        encoding="utf-8",
    )
    data, store = _small_data(tmp_path), tmp_path / "store"
    real_predict = phases.predict

    def out_of_memory(ctx, out_dir):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(phases, "predict", out_of_memory)
    with pytest.raises(RuntimeError, match="injected"):
        pipeline.run_model(str(profile), run_id="pinned", data_dir=data, storage_url=str(store), force=True)
    _move_main(hub_cache, COMMITS[1])  # upstream changed between the crash and the retry
    monkeypatch.setattr(phases, "predict", real_predict)
    result = pipeline.run_model(str(profile), run_id="pinned", data_dir=data, storage_url=str(store), force=True)

    assert result.metrics["base"] == {"model": REPO, "revision": "main", "commit": COMMITS[0]}  # the retry kept it
    assert (
        storage.read_manifest("pinned", "pinned", storage.open_storage(str(store)))["extra"]["base_commit"]
        == COMMITS[0]
    )
    trained = {s: (result.run_dir / "predictions" / f"{s}.csv").read_bytes() for s in ("dev", "test")}

    pipeline.predict_run(result.run_dir, data_dir=data, out_dir=tmp_path / "later")
    assert {s: (tmp_path / "later" / "predictions" / f"{s}.csv").read_bytes() for s in trained} == trained

    from dialsum.cli.champion import predict_champion
    from dialsum.release import registry

    store_handle = storage.open_storage(str(store))
    assert registry.promote(store_handle, registry.describe(store_handle, "pinned"), "always").promoted
    predict_champion(data, tmp_path / "champion", str(store))
    assert {s: (tmp_path / "champion" / "predictions" / f"{s}.csv").read_bytes() for s in trained} == trained

    unpinned = tmp_path / "unpinned"  # the same run folder without its record predicts on today's main
    shutil.copytree(result.run_dir, unpinned)
    metrics = json.loads((unpinned / "metrics.json").read_text())
    (unpinned / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "base"}))
    pipeline.predict_run(unpinned, data_dir=data, out_dir=tmp_path / "main")
    assert (tmp_path / "main" / "predictions" / "dev.csv").read_bytes() != trained["dev"]
