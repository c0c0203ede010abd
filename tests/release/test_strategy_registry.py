"""A new ensemble strategy is one registered function: offered, chosen on the selection rows, reported on the
held-out rows and applied by `combine`, with nothing else changed."""

from __future__ import annotations

import pytest

from dialsum.data import load_splits
from dialsum.release import strategies
from dialsum.release.ensemble import BEST_SINGLE, CONSENSUS, build_ensemble, combine

WRONG = "요약 없음"


@pytest.fixture
def longest(monkeypatch: pytest.MonkeyPatch):
    """The strategy `longest` (per row, the longest model prediction), registered for one test only."""
    monkeypatch.setattr(strategies, "STRATEGIES", dict(strategies.STRATEGIES))

    @strategies.strategy("longest")
    def pick(rows: strategies.Rows) -> list[strategies.Choice]:
        return [max(sorted(rows.predictions), key=lambda m: len(rows.predictions[m][f])) for f in rows.fnames]

    return pick


def _models(refs: dict[str, str]) -> dict[str, dict[str, str]]:
    """Three models, each right (the reference) on every third row and a short, shared wrong summary elsewhere."""
    return {
        m: {f: ref if i % 3 == k else WRONG for i, (f, ref) in enumerate(refs.items())}
        for k, m in enumerate(["a", "b", "c"])
    }


def test_one_registered_function_is_offered_chosen_on_selection_and_reported_on_held_out(longest) -> None:
    refs = {ex.fname: ex.summary for ex in load_splits(None, splits=("dev",))["dev"]}
    dev = _models(refs)
    test = _models({f"test_{i}": ref for i, ref in enumerate(refs.values())})
    candidates = {m: {"dev": dev[m], "test": test[m]} for m in dev}
    result = build_ensemble(candidates, {"a": 40.0, "b": 39.0, "c": 38.0}, refs)
    assert list(result.strategies) == [BEST_SINGLE, CONSENSUS, "longest"]
    row = result.strategies["longest"]
    assert result.choice == "longest" and row["selection"] == pytest.approx(100)
    assert result.held_out and row["held_out"] == pytest.approx(100) and row["vs_best_single_low"] > 0
    assert max(result.strategies[name]["selection"] for name in (BEST_SINGLE, CONSENSUS)) < 90
    assert result.predictions["dev"] == refs and set(result.predictions["test"].values()) == set(refs.values())
    assert combine("longest", candidates, result.dev_scores) == result.predictions


def test_without_registration_the_name_is_unknown() -> None:
    with pytest.raises(ValueError, match="unknown ensemble strategy 'longest'"):
        combine("longest", {"a": {"test": {"t": "x"}}}, {"a": 1.0})
