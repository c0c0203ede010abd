"""`predict` (a run folder, a published run, or the champion) and `evaluate` (a submission against references).

Both print a small table, or with `--json` one JSON object for scripts. `predict` never writes into the run it
reads: by default its predictions go to a new folder `predict-<run-id>-<model>[-N]` in the current folder.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dialsum.cli import checks
from dialsum.errors import DataError, DialsumError

SCORE_KEYS = ("rouge1", "rouge2", "rougeL", "score")
PUBLISHED_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}/[a-z0-9][a-z0-9._-]{0,63}")


def register(sub) -> None:
    p = sub.add_parser("predict", help="write predictions with a trained run folder")
    p.add_argument(
        "--run",
        required=True,
        help="run folder (holds config.yaml and model/), a published run RUN_ID/MODEL in storage, or "
        "`champion` to fetch the model in service",
    )
    p.add_argument(
        "--data",
        type=checks.location,
        help="folder or storage URL with dev.csv and/or test.csv (default: bundled sample)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="new or empty output folder (default: a new folder predict-<run-id>-<model> here; for champion: .)",
    )
    p.add_argument("--storage", help="storage URL of a published run or the champion (default: DIALSUM_STORAGE_URL)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_predict)
    p = sub.add_parser("evaluate", help="score a submission-shaped CSV against references")
    p.add_argument("--predictions", type=Path, required=True)
    p.add_argument(
        "--references",
        type=Path,
        required=True,
        help="CSV with fname and summary columns (e.g. dev.csv); every reference row is scored",
    )
    p.add_argument(
        "--partial", action="store_true", help="score only the references the predictions cover (a subset), and say so"
    )
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    p.set_defaults(func=_evaluate)


def _predict(args: argparse.Namespace) -> int:
    args.data = checks.fetched(args.data)
    if args.run == "champion":
        from dialsum.cli.champion import predict_command

        checks.data(args.data, splits=("dev", "test"), optional=("dev", "test"))
        checks.destination(args.out or Path("."), "output")
        return predict_command(args)
    splits = checks.data(args.data, splits=("dev", "test"), optional=("dev", "test"))
    with run_folder(args.run, args.storage) as (run, (run_id, model)):
        out = args.out or new_folder(Path(f"predict-{run_id}-{model}"))
        if run.resolve() == out.resolve() or run.resolve() in out.resolve().parents:
            raise DialsumError(
                f"--out {out} is inside the run folder {run}: predict never writes over a run's "
                "own files; pass another --out"
            )
        checks.destination(out, "output", empty=True)
        from dialsum.pipeline import predict_run

        scores = predict_run(run, data_dir=args.data, out_dir=out)
    result = {
        "run": f"{run_id}/{model}",
        "predictions": str(out / "predictions"),
        "dev": scores,
        "dev_rows": len(splits.get("dev", [])) if scores else 0,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if scores:
        print(score_table([{"rows": result["dev_rows"], **scores}]))
    print(f"predictions of {run_id}/{model}: {result['predictions']}")
    return 0


def new_folder(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, … : the first that does not exist yet."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


@contextmanager
def run_folder(run: str, storage_url: str | None) -> Iterator[tuple[Path, tuple[str, str]]]:
    """The run folder `--run` names, with its (run id, model): a local folder as it is, or a published run
    `RUN_ID/MODEL` fetched (verified) into a temporary folder for the duration."""
    path = Path(run)
    if path.is_dir() or not PUBLISHED_RE.fullmatch(run):
        check_run_folder(path)
        yield path, (path.resolve().parent.name, path.resolve().name)
        return
    from dialsum import storage

    store = storage.open_storage(storage_url)
    run_id, model = run.split("/")
    if storage.read_manifest(run_id, model, store) is None:
        raise DialsumError(
            f"--run {run}: no such folder, and no published run {run} in {store.url} (list published "
            "runs with `dialsum artifacts ls`, fetch one with `dialsum artifacts get RUN MODEL DIR`, "
            "or pass --storage)"
        )
    with tempfile.TemporaryDirectory(prefix="dialsum-predict-") as tmp:
        yield storage.fetch(run_id, model, Path(tmp) / "run", store), (run_id, model)


def check_run_folder(run: Path) -> None:
    """A run folder holds config.yaml (a valid profile) and model/; else one line naming what is missing."""
    from dialsum.config import load_model_config

    if not run.is_dir():
        raise DialsumError(
            f"--run {run}: no such folder (a run folder is outputs/<run-id>/<model>/; a published "
            "run is RUN_ID/MODEL, listed by `dialsum artifacts ls`)"
        )
    missing = [name for name in ("config.yaml", "model") if not (run / name).exists()]
    if missing == ["model"] and (run / "responses.jsonl").is_file():  # an API model's run: no weights, a cache
        missing = []
    if missing:
        raise DialsumError(
            f"--run {run} is not a run folder: no {' and no '.join(missing)} in it (a run folder is "
            "outputs/<run-id>/<model>/, or one fetched with `dialsum artifacts get`)"
        )
    load_model_config(str(run / "config.yaml"))


def score_table(rows: list[dict]) -> str:
    """Scores as an aligned table: rows, ROUGE-1/2/L F1 (0..1, four decimals) and the competition score (0..100)."""

    def cell(row: dict, col: str) -> str:
        value = row.get(col, "-")
        return (f"{value:.2f}" if col == "score" else f"{value:.4f}") if isinstance(value, float) else str(value)

    cols = [c for c in ("split", "rows", *SCORE_KEYS) if any(c in r for r in rows)]
    lines = [cols] + [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def matched_references(refs: dict[str, str], preds: dict[str, str], where: Path, partial: bool) -> dict[str, str]:
    """The references to score: all of them, or with `partial` those the predictions cover. A prediction whose
    fname is not a reference is refused either way, naming the first few."""
    from dialsum.data import first_few

    unknown = [fname for fname in preds if fname not in refs]
    if unknown:
        raise DataError(f"{where}: {len(unknown)} fname(s) not in the references: {first_few(unknown)}")
    missing = [fname for fname in refs if fname not in preds]
    if missing and not partial:
        raise DataError(
            f"{where}: no prediction for {len(missing)} of {len(refs)} reference fnames: "
            f"{first_few(missing)} (--partial scores only the rows predicted)"
        )
    covered = {fname: ref for fname, ref in refs.items() if fname in preds}
    if not covered:
        raise DataError(f"{where}: no prediction for any reference fname")
    return covered


def _evaluate(args: argparse.Namespace) -> int:
    from dialsum.data import read_references, read_submission
    from dialsum.metric import score

    refs = read_references(args.references)
    preds = read_submission(args.predictions)
    scored = matched_references(refs, preds, args.predictions, args.partial)
    scores = {**score([preds[fname] for fname in scored], list(scored.values())), "rows": len(scored)}
    if len(scored) < len(refs):
        scores["partial"] = f"{len(scored)} of {len(refs)} reference rows"
    if args.json:
        print(json.dumps(scores, indent=2))
        return 0
    print(score_table([scores]))
    if "partial" in scores:
        print(f"partial: scored {scores['partial']} (--partial)")
    return 0
