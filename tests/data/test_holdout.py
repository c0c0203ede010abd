"""The one dev split: stable by fname, the configured fraction, a record that names the held-out rows, and on the
real dev set a held-out part that shares no row with any choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialsum.data import holdout, read_split
from dialsum.settings import get_settings

FNAMES = [f"dev_{i}" for i in range(2000)]
REAL_DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "competition" / "dev.csv"


def test_a_row_keeps_its_part_whatever_else_dev_holds() -> None:
    split = holdout.DevSplit(0, 0.5)
    selection, held = split.parts(FNAMES)
    assert set(selection).isdisjoint(held) and len(selection) + len(held) == len(FNAMES)
    grown = split.parts(FNAMES + [f"new_{i}" for i in range(300)])
    assert set(held) <= set(grown[1]) and set(selection) <= set(grown[0])
    assert abs(len(held) / len(FNAMES) - 0.5) < 0.05
    assert holdout.DevSplit(1, 0.5).parts(FNAMES)[1] != held  # another seed, other rows


def test_the_fraction_moves_rows_only_from_selection_to_held_out() -> None:
    half, more = holdout.DevSplit(0, 0.5).parts(FNAMES)[1], holdout.DevSplit(0, 0.6).parts(FNAMES)[1]
    assert set(half) < set(more) and abs(len(more) / len(FNAMES) - 0.6) < 0.05
    with pytest.raises(ValueError, match="between 0 and 1"):
        holdout.DevSplit(0, 1.0)


def test_the_record_names_the_split_and_the_settings_choose_it(monkeypatch: pytest.MonkeyPatch) -> None:
    split = holdout.DevSplit(3, 0.4)
    record = split.record(FNAMES)
    assert holdout.DevSplit.from_record(record) == split
    assert record["held_out_sha256"] == holdout.fnames_hash(split.parts(FNAMES)[1])
    assert holdout.same_split(record, split.record(list(reversed(FNAMES))))
    assert not holdout.same_split(record, holdout.DevSplit(3, 0.5).record(FNAMES))
    monkeypatch.setenv("DIALSUM_SPLIT_SEED", "3")
    monkeypatch.setenv("DIALSUM_HELD_OUT_FRACTION", "0.4")
    get_settings.cache_clear()
    try:
        assert holdout.dev_split() == split and holdout.dev_split(seed=4).seed == 4
    finally:
        get_settings.cache_clear()


def test_reads_inside_a_choice_reach_the_audit() -> None:
    seen = []
    with holdout.audit(lambda choice, rows: seen.append((choice, rows))):
        holdout.read(["a"])  # outside a choice: not a choice's read
        with holdout.choosing("strategy"):
            holdout.read(["b", "c"])
    assert seen == [("strategy", ["b", "c"])]


class Features:
    @staticmethod
    def build_features(cfg, tok, rows, with_labels):
        return list(rows)


@pytest.mark.skipif(not REAL_DEV.is_file(), reason="no shared data beside the repository")
def test_on_the_real_dev_set_the_held_out_part_shares_no_row_with_any_choice() -> None:
    from dialsum.config import load_model_config
    from dialsum.engine.evaluation import Evaluator, selection_score
    from dialsum.release.strategies import build_ensemble

    dev = read_split(REAL_DEV, "dev")
    fnames = [ex.fname for ex in dev]
    split = holdout.dev_split()
    held = set(split.parts(fnames)[1])
    reads: dict[str, set[str]] = {}
    for name in ("kobart", "qwen3-4b"):  # the best step: eval_score_rows / eval_loss_rows of the real profiles
        cfg = load_model_config(name)
        evaluator = Evaluator(cfg, Features, None, dev)
        reads[f"{name} best step (score)"] = {ex.fname for ex in evaluator.score_rows}
        reads[f"{name} best step (loss)"] = {ex.fname for ex in evaluator.loss_features}
    refs = {ex.fname: ex.summary for ex in dev}
    short = {f: " ".join(s.split()[:4]) for f, s in refs.items()}
    with holdout.audit(lambda choice, rows: reads.setdefault(choice, set()).update(rows)):
        build_ensemble({"a": {"dev": refs}, "b": {"dev": short}}, {"a": 1.0, "b": 1.0}, refs)
        selection_score(dev, [short[f] for f in fnames])  # what a sweep ranks its trials on
    before = len(set(holdout.DevSplit(0, 0.5).parts(fnames)[1]) & set(fnames[:200]))
    print(
        f"dev {len(dev)} rows: selection {len(dev) - len(held)}, held out {len(held)} "
        f"(seed {split.seed}, fraction {split.fraction}); before: {before} held-out rows among rows 1-200"
    )
    for choice, rows in sorted(reads.items()):
        print(f"  {choice}: reads {len(rows)} rows, {len(rows & held)} of them held out")
    assert reads and all(rows and not rows & held for rows in reads.values())
