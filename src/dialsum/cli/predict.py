"""`predict` (a run folder, or the champion) and `evaluate` (a submission against references)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dialsum.cli import checks
from dialsum.errors import DialsumError


def register(sub) -> None:
    p = sub.add_parser("predict", help="write predictions with a trained run folder")
    p.add_argument("--run", type=Path, required=True,
                   help="run folder (holds config.yaml and model/), or `champion` to fetch the model in service")
    p.add_argument("--data", type=checks.location,
                   help="folder or storage URL with dev.csv and/or test.csv (default: bundled sample)")
    p.add_argument("--out", type=Path, help="output folder (default: the run folder; for champion: .)")
    p.add_argument("--storage", help="storage URL of the champion (default: DIALSUM_STORAGE_URL)")
    p.set_defaults(func=_predict)
    p = sub.add_parser("evaluate", help="score a submission-shaped CSV against references")
    p.add_argument("--predictions", type=Path, required=True)
    p.add_argument("--references", type=Path, required=True,
                   help="CSV with fname and summary columns (e.g. dev.csv); every reference row is scored")
    p.set_defaults(func=_evaluate)


def _predict(args: argparse.Namespace) -> int:
    args.data = checks.fetched(args.data)
    if str(args.run) == "champion":
        from dialsum.cli.champion import predict_command

        checks.data(args.data, splits=("dev", "test"), optional=("dev", "test"))
        checks.destination(args.out or Path("."), "output")
        return predict_command(args)
    check_run_folder(args.run)
    splits = checks.data(args.data, splits=("dev", "test"), optional=("dev", "test"))
    checks.destination((args.out or args.run) / "predictions", "output")
    from dialsum.pipeline import predict_run

    scores = predict_run(args.run, data_dir=args.data, out_dir=args.out)
    print(json.dumps({"predictions": str((args.out or args.run) / "predictions"), "dev": scores,
                      "dev_rows": len(splits.get("dev", []))}, indent=2))
    return 0


def check_run_folder(run: Path) -> None:
    """A run folder holds config.yaml (a valid profile) and model/; else one line naming what is missing."""
    from dialsum.config import load_model_config

    if not run.is_dir():
        raise DialsumError(f"--run {run}: no such folder")
    missing = [name for name in ("config.yaml", "model") if not (run / name).exists()]
    if missing == ["model"] and (run / "responses.jsonl").is_file():  # an API model's run: no weights, a cache
        missing = []
    if missing:
        raise DialsumError(f"--run {run} is not a run folder: no {' and no '.join(missing)} in it (a run folder is "
                           "outputs/<run-id>/<model>/, or one fetched with `dialsum artifacts get`)")
    load_model_config(str(run / "config.yaml"))


def _evaluate(args: argparse.Namespace) -> int:
    from dialsum.data import read_references, read_submission
    from dialsum.metric import score

    refs = read_references(args.references)
    preds = read_submission(args.predictions)
    missing = [fname for fname in refs if fname not in preds]
    if missing:
        raise DialsumError(f"{args.predictions}: no prediction for fname {missing[0]} ({len(missing)} missing)")
    scores = score([preds[fname] for fname in refs], list(refs.values()))
    print(json.dumps({**scores, "rows": len(refs)}, indent=2))
    return 0
