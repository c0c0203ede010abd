"""`predict` (a run folder, or the champion) and `evaluate` (a submission against references)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dialsum.errors import DialsumError


def register(sub) -> None:
    p = sub.add_parser("predict", help="write predictions with a trained run folder")
    p.add_argument("--run", type=Path, required=True,
                   help="run folder (holds config.yaml and model/), or `champion` to fetch the model in service")
    p.add_argument("--data", type=Path, help="folder with dev.csv and/or test.csv (default: bundled sample)")
    p.add_argument("--out", type=Path, help="output folder (default: the run folder; for champion: .)")
    p.add_argument("--storage", help="storage URL of the champion (default: DIALSUM_STORAGE_URL)")
    p.set_defaults(func=_predict)
    p = sub.add_parser("evaluate", help="score a submission-shaped CSV against references")
    p.add_argument("--predictions", type=Path, required=True)
    p.add_argument("--references", type=Path, required=True, help="CSV with fname and summary")
    p.set_defaults(func=_evaluate)


def _predict(args: argparse.Namespace) -> int:
    if str(args.run) == "champion":
        from dialsum.cli.champion import predict_command

        return predict_command(args)
    from dialsum.pipeline import predict_run

    scores = predict_run(args.run, data_dir=args.data, out_dir=args.out)
    print(json.dumps({"predictions": str((args.out or args.run) / "predictions"), "dev": scores}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from dialsum.data import read_split, read_submission
    from dialsum.metric import score

    refs = read_split(args.references, "dev")
    preds = read_submission(args.predictions)
    missing = [ex.fname for ex in refs if ex.fname not in preds]
    if missing:
        raise DialsumError(f"{args.predictions}: no prediction for fname {missing[0]} ({len(missing)} missing)")
    print(json.dumps(score([preds[ex.fname] for ex in refs], [ex.summary for ex in refs]), indent=2))
    return 0
