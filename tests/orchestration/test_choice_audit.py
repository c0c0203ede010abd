"""The audit of choices: a whole run on the tiny profiles (several models with candidates and their ensemble, a
sweep, a decoding search and a K-fold) reads no held-out dev row in anything that chooses.

Every dev row a choice reads is recorded: the rows the code declares next to its metric or loss call
(`data.holdout.read`, across child processes through DIALSUM_CHOICE_AUDIT_FILE) and, in this process, every
metric call made while a choice is being made (its references mapped back to their rows)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.prefect_server import migrated_home

from dialsum import metric
from dialsum.data import holdout, load_splits
from dialsum.settings import get_settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHEAP = ["training.debug_steps=2"]


@pytest.fixture
def audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], dict[str, set[str]]]]:
    """A function returning choice -> every dev fname it read so far, in this process and in every child."""
    log = tmp_path / "choices.jsonl"
    for name, value in {
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DIALSUM_OUTPUT_DIR": str(tmp_path / "outputs"),
        "DIALSUM_CONFIG_DIR": str(REPO / "configs"),
        "DIALSUM_CHOICE_AUDIT_FILE": str(log),
        "PREFECT_HOME": str(migrated_home(tmp_path / "prefect")),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    by_summary = defaultdict(set)
    for ex in load_splits(None, splits=("dev",))["dev"]:
        by_summary[ex.summary].add(ex.fname)
    calls: dict[str, set[str]] = defaultdict(set)

    def watch(name: str):
        original = getattr(metric, name)

        def recorded(predictions, references, *args, **kwargs):
            if holdout.current_choice() is not None:
                for ref in references:
                    calls[f"{holdout.current_choice()} ({name})"] |= by_summary.get(ref, set())
            return original(predictions, references, *args, **kwargs)

        monkeypatch.setattr(metric, name, recorded)

    def reads() -> dict[str, set[str]]:
        out = defaultdict(set, {choice: set(rows) for choice, rows in calls.items()})
        for line in log.read_text(encoding="utf-8").splitlines() if log.is_file() else []:
            entry = json.loads(line)
            out[entry["choice"]] |= set(entry["fnames"])
        return out

    watch("score")
    watch("row_scores")
    yield reads
    get_settings.cache_clear()


def assert_no_leak(reads: dict[str, set[str]], stage: str) -> None:
    dev = [ex.fname for ex in load_splits(None, splits=("dev",))["dev"]]
    held = set(holdout.dev_split().parts(dev)[1])
    print(
        f"after {stage}:",
        {choice: len(rows) for choice, rows in sorted(reads.items())},
        f"held out: {len(held)} of {len(dev)}",
    )
    leaks = {choice: sorted(rows & held) for choice, rows in reads.items() if rows & held}
    assert not leaks, f"held-out dev rows read by a choice after {stage}: {leaks}"


def test_no_choice_reads_a_held_out_row(
    audited: Callable[[], dict[str, set[str]]], tmp_path: Path, prefect_api: str
) -> None:
    from dialsum.orchestration import kfold, sweep, train_all
    from dialsum.pipeline.decoding_search import tune_decoding

    store = str(tmp_path / "store")
    summary = train_all.run_embedded(
        ["tiny-bart", "tiny-qwen3"],
        debug=True,
        storage_url=store,
        run_id="audit-1",
        overrides=[*CHEAP, "generation.num_candidates=2", "generation.candidate_method=temperature"],
    )
    assert summary["ensemble"] is not None, summary
    assert_no_leak(audited(), "train-all")
    sweep.run_embedded(
        "tiny-bart",
        space=str(REPO / "configs" / "sweeps" / "tiny-bart.yaml"),
        trials=1,
        study="audit-sweep",
        storage_url=store,
        debug=True,
        embedded=True,
        overrides=CHEAP,
        poll_seconds=0.5,
    )
    tune_decoding(
        Path(get_settings().output_dir) / "audit-1" / "tiny-bart",
        trials=1,
        rows=4,
        space={"params": {"generation.num_beams": {"choices": [1, 2]}}},
        seed=5,
        out_dir=tmp_path / "decoding",
    )
    kfold.run_embedded(
        "tiny-bart",
        k=2,
        run_id="audit-kf",
        storage_url=store,
        debug=True,
        embedded=True,
        overrides=CHEAP,
        poll_seconds=0.5,
    )
    reads = audited()
    assert_no_leak(reads, "the sweep, tune-decoding and the K-fold")
    choices = {choice.split(" (")[0] for choice in reads}
    assert {
        "dev_score: best step",
        "ensemble strategy",
        "pooled MBR model weights",
        "sweep objective",
        "decoding search",
    } <= choices, sorted(reads)
