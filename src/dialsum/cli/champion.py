"""`champion` sub-commands (show, promote, rollback) and predicting with the champion."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from dialsum import storage
from dialsum.release import registry

CHAMPION = "champion"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("champion", help="show, promote or roll back the model in service")
    commands = parser.add_subparsers(dest="champion_command", required=True)

    show = commands.add_parser("show", help="the champion and its history")
    show.add_argument("--history", action="store_true", help="also list every promotion and rollback")
    _storage_arg(show)
    show.set_defaults(func=_show)

    promote = commands.add_parser("promote", help="make a published run the champion if it beats the current one")
    promote.add_argument("run", metavar="RUN_ID", help="a run id (its ensemble) or RUN_ID/MODEL for one model")
    promote.add_argument("--force", action="store_true", help="promote even if it does not beat the champion")
    add_margin_arg(promote, registry.PROMOTION_CONFIDENCE, "its")
    promote.add_argument(
        "--data",
        help="dev data folder or storage URL: both runs' saved dev predictions are "
        "re-scored on it (needed when the champion was scored on other dev data)",
    )
    _storage_arg(promote)
    promote.set_defaults(func=_promote)

    rollback = commands.add_parser("rollback", help="restore the champion the current one replaced")
    _storage_arg(rollback)
    rollback.set_defaults(func=_rollback)


def add_margin_arg(parser: argparse.ArgumentParser, confidence: float, whose: str) -> None:
    """`--margin`: the paired dev-score gain over the champion must have its lower bound (at `confidence`) above it."""
    parser.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help=f"promote only when the {confidence:.0%}% lower bound of {whose} paired dev-score gain over the "
        "champion is above this (default 0)",
    )


def _storage_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", metavar="URL", help="storage URL or folder (default: DIALSUM_STORAGE_URL)")


def describe_line(champion: dict[str, Any]) -> str:
    what = (
        f"ensemble ({champion['strategy']}) of {', '.join(champion['members'])}"
        if champion["kind"] == "ensemble"
        else f"model {champion['model']}"
    )
    held = champion.get("held_out_score")
    split = champion.get("split") or {}
    on = (
        f" on {split['held_out_rows']} rows, split seed {split['seed']}, held-out fraction {split['held_out_fraction']}"
        if split.get("held_out_rows") is not None
        else ""
    )
    held = f" (held-out {held:.2f}{on})" if held is not None else ""
    return f"{champion['run_id']}/{champion['model']}: {what}; dev score {champion['dev_score']:.2f}{held}"


def _show(args: argparse.Namespace) -> int:
    store = storage.open_storage(args.storage)
    record = registry.current(store)
    if record is None:
        print(f"no champion in {store.url}")
        return 0
    c = record.champion
    print(f"champion (generation {record.generation}, {record.action} at {record.at}): {describe_line(c)}")
    print(f"  reason: {record.reason}")
    if record.comparison:
        diff = record.comparison
        print(
            f"  vs the champion it replaced: {diff['mean']:+.2f} ({diff['confidence']:.0%} CI {diff['low']:+.2f} to "
            f"{diff['high']:+.2f}) on {diff['rows']} dev rows, paired bootstrap"
        )
    print(
        f"  dev data {(c.get('dev_sha256') or '?')[:12]}  data {(c.get('data_sha256') or '?')[:12]}  "
        f"code {(c.get('code_sha256') or '?')[:12]}  commit {(c.get('commit') or '?')[:12]}"
    )
    if args.history:
        for past in registry.history(store):
            print(f"  {past.generation:>4}  {past.at}  {past.action:<8}  {describe_line(past.champion)}")
    return 0


def _references(data: str | None) -> dict[str, str] | None:
    if data is None:
        return None
    from dialsum.data import load_splits
    from dialsum.data.source import resolve

    return {ex.fname: ex.summary for ex in load_splits(resolve(data), splits=("dev",))["dev"]}


def _promote(args: argparse.Namespace) -> int:
    store = storage.open_storage(args.storage)
    run_id, _, model = args.run.partition("/")
    challenger = registry.describe(store, run_id, model or None)
    decision = registry.promote(
        store, challenger, "always" if args.force else "if-better", args.margin, _references(args.data)
    )
    verdict = "promoted" if decision.promoted else "not promoted"
    print(f"{challenger['run_id']}/{challenger['model']} {verdict}: {decision.reason}")
    return 0 if decision.promoted else 1


def _rollback(args: argparse.Namespace) -> int:
    store = storage.open_storage(args.storage)
    record = registry.rollback(store)
    print(f"champion is again {describe_line(record.champion)} (generation {record.generation})")
    return 0


# ---------------------------------------------------------------- predicting with the champion


def predict_champion(data_dir: Path | None, out_dir: Path, storage_url: str | None = None) -> dict[str, Any]:
    """Fetch the champion's models, predict with each, combine as the champion does; write out_dir/predictions."""
    from dialsum.data import write_submission
    from dialsum.pipeline import predict_run
    from dialsum.release import ensemble

    store = storage.open_storage(storage_url)
    record = registry.current(store)
    if record is None:
        raise registry.RegistryError(f"no champion in {store.url}; promote a run with `dialsum champion promote`")
    champ = record.champion
    with tempfile.TemporaryDirectory(prefix="dialsum-champion-") as tmp:
        candidates: ensemble.Candidates = {}
        nbest: ensemble.NBest = {}
        for member in champ["members"]:
            source = champ.get("sources", {}).get(member, champ["run_id"])
            run_dir = storage.fetch(source, member, Path(tmp) / "runs" / member, store)
            predict_run(run_dir, data_dir=data_dir, out_dir=Path(tmp) / "out" / member)
            candidates[member] = ensemble.read_predictions(Path(tmp) / "out" / member / "predictions")
            nbest[member] = ensemble.read_nbest(Path(tmp) / "out" / member / "predictions")
        combined = ensemble.combine(
            champ.get("strategy") or ensemble.BEST_SINGLE,
            candidates,
            champ["member_scores"],
            nbest,
            best=champ.get("best_model"),
            metric_weights=champ.get("metric_weights"),
            weights=champ.get("weights"),
        )
    for split, preds in combined.items():
        write_submission(out_dir / "predictions" / f"{split}.csv", list(preds), list(preds.values()))
    return {
        "champion": f"{champ['run_id']}/{champ['model']}",
        "generation": record.generation,
        "predictions": {split: str(out_dir / "predictions" / f"{split}.csv") for split in combined},
    }


def predict_command(args: argparse.Namespace) -> int:
    out = args.out or Path(".")
    result = predict_champion(args.data, out, getattr(args, "storage", None))
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
        return 0
    for split, path in result["predictions"].items():
        print(f"{split}: {path}")
    print(f"predictions of the champion {result['champion']}")
    return 0
