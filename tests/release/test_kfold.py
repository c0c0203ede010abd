"""K-fold results from fold runs' outputs: OOF predictions, pooled and per-fold scores with an interval, the fold
ensemble; and the bootstrap helpers behind them."""

from __future__ import annotations

import csv
import io

from dialsum.release.ensemble import ModelOutputs
from dialsum.release.kfold import assemble, oof_csv

REFS = {
    "t0": "#Person1#이 책을 산다.",
    "t1": "#Person2#가 비를 걱정한다.",
    "t2": "두 사람이 저녁을 먹는다.",
    "t3": "#Person1#이 버스를 기다린다.",
}
DEV = {"d0": "#Person1#이 은행에 간다.", "d1": "#Person2#가 회의를 연다."}


def outputs(fold: int, held: list[str], dev_score: float) -> ModelOutputs:
    test = {f: REFS[f] if fold == 0 else "아무 말" for f in held} | {"x0": f"시험 {fold}", "x1": "시험"}
    return ModelOutputs(
        f"fold-{fold}", {"dev": {"score": dev_score}}, {"dev": dict(DEV), "test": test}, f"store/r-f{fold}/m"
    )


def test_every_train_row_gets_its_out_of_fold_prediction_and_scores_add_up() -> None:
    assignment = {"t0": 0, "t1": 1, "t2": 0, "t3": 1}
    result = assemble(assignment, {0: outputs(0, ["t0", "t2"], 80.0), 1: outputs(1, ["t1", "t3"], 60.0)}, REFS, DEV)
    assert [(f, fold) for f, (fold, _) in result.oof.items()] == list(assignment.items())
    s = result.summary
    assert s["oof_rows"] == s["train_rows"] == 4
    assert s["folds"][0]["oof_score"] == 100.0 and s["folds"][1]["oof_score"] == 0.0
    assert s["oof_score"] == 50.0 and s["oof_interval"][0] <= 50.0 <= s["oof_interval"][1]
    assert s["ensemble"]["best_fold"] == "fold-0" and s["ensemble"]["test_rows"] == 2
    assert set(result.ensemble.predictions["test"]) == {"x0", "x1"}, "train rows never enter the test ensemble"
    rows = list(csv.DictReader(io.StringIO(oof_csv(result).decode())))
    assert [r["fname"] for r in rows] == ["t0", "t1", "t2", "t3"] and rows[1]["fold"] == "1"


def test_a_failed_fold_leaves_its_rows_without_oof_predictions() -> None:
    result = assemble({"t0": 0, "t1": 1}, {0: outputs(0, ["t0"], 70.0)}, REFS, DEV)
    assert result.summary["oof_rows"] == 1 and result.summary["completed_folds"] == [0]
    assert result.summary["folds"][1]["oof_score"] is None
