"""The K-fold summary the CLI prints: an aligned folds table and intervals written as intervals."""

from __future__ import annotations

from dialsum.orchestration.kfold import format_summary


def test_the_folds_table_is_aligned_and_the_interval_reads_as_an_interval() -> None:
    summary = {
        "folds": [
            {"fold": 0, "rows": 8, "oof_rows": 8, "oof_score": 1.4514, "dev_score": 12.5},
            {"fold": 10, "rows": 1200, "oof_rows": 1200, "oof_score": None, "dev_score": 9.25},
        ],
        "oof_score": 1.53,
        "oof_interval": [1.2, 1.86],
        "oof_rows": 1208,
        "train_rows": 1208,
        "run_id": "kf",
        "location": "artifacts/kfold/kf",
    }
    lines = format_summary(summary).splitlines()
    header, first, second = lines[:3]
    for column in ("rows", "oof_rows", "oof_score", "dev_score"):  # every cell starts under its header
        start = header.index(column)
        assert first[start] != " " and second[start] != " " and first[start - 1] == " " == second[start - 1]
    assert lines[3] == "pooled OOF score 1.53 (95% CI [1.20, 1.86]) on 1208 of 1208 train rows"
