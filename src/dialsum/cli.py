"""The `dialsum` console script: the one entry point for users, flows and images."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from dialsum.errors import DialsumError

log = logging.getLogger("dialsum")


def _resume_run_id(args: argparse.Namespace) -> None:
    """`--resume RUN_ID` continues that run: it becomes the run id (and may not contradict --run-id)."""
    if args.resume:
        if args.run_id and args.run_id != args.resume:
            raise DialsumError(f"--resume {args.resume} and --run-id {args.run_id} name different runs")
        args.run_id = args.resume


def _validate_inputs(args: argparse.Namespace) -> None:
    """Configs and data checked before torch or Prefect is imported, so mistakes are reported in seconds."""
    from dialsum.config import load_model_config
    from dialsum.data import load_splits
    from dialsum.datasource import is_url, resolve

    for model in args.models:
        load_model_config(model)
    if not is_url(args.data):
        load_splits(resolve(args.data))


def _train(args: argparse.Namespace) -> int:
    if args.gpus > 1 and (args.mode != "single" or len(args.models) != 1):
        raise DialsumError("--gpus trains one model on several GPUs: use --mode single with one model")
    if args.mode != "single":
        return _train_all(args)
    if len(args.models) != 1:
        raise DialsumError(f"--mode single takes one model, got {len(args.models)}; use --mode multi_model")
    if args.promote != "never":
        raise DialsumError("--promote applies to --mode multi_model and train-all (the run's ensemble); "
                           "promote a single run with `dialsum champion promote RUN_ID/MODEL`")
    _validate_inputs(args)
    _resume_run_id(args)
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return _train_data_parallel(args)
    from dialsum.pipeline import run_model

    result = run_model(args.models[0], run_id=args.run_id, data_dir=args.data, debug=args.debug,
                       eval_before=args.eval_before, storage_url=args.storage, force=args.force,
                       resume=bool(args.resume))
    if result.metrics:  # data-parallel ranks other than 0 report nothing
        print(format_table([_row(result.metrics, "completed", result.location)]))
    return 0


def _train_data_parallel(args: argparse.Namespace) -> int:
    """`train --gpus N`: the same command once per GPU through `accelerate launch`, under one run id."""
    from dialsum import distributed
    from dialsum.pipeline import new_run_id

    if args.mode != "single" or len(args.models) != 1:
        raise DialsumError("--gpus trains one model on several GPUs: use --mode single with one model")
    argv = ["train", "--models", args.models[0], "--run-id", args.run_id or new_run_id()]
    argv += ["--data", str(args.data)] if args.data else []
    argv += ["--storage", args.storage] if args.storage else []
    argv += [flag for flag, on in (("--debug", args.debug), ("--eval-before", args.eval_before),
                                   ("--force", args.force)) if on]
    return distributed.launch(["-v", *argv] if args.verbose else argv, args.gpus)


def _train_all(args: argparse.Namespace) -> int:
    _validate_inputs(args)
    from dialsum.orchestration import run_embedded

    _resume_run_id(args)

    summary = run_embedded(args.models, data_dir=args.data, debug=args.debug, storage_url=args.storage,
                           run_id=args.run_id, eval_before=args.eval_before, promote=args.promote,
                           margin=args.margin, force=args.force)
    print(format_table(summary["rows"]))
    print_outcome(summary)
    failed = [r["model"] for r in summary["rows"] if r["status"] == "failed"]
    if failed:
        print(f"failed models: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def print_outcome(summary: dict) -> None:
    """The lines under the table: the ensemble, the promotion decision, the report."""
    if summary.get("status") == "unchanged":
        print("unchanged: data, config and code match an earlier run; nothing was retrained")
    if summary.get("ensemble"):
        print(f"ensemble ({summary['ensemble']['choice']}): dev score {summary['ensemble']['dev_score']:.2f}")
    if summary.get("promotion"):
        verdict = "promoted" if summary["promotion"]["promoted"] else "not promoted"
        print(f"champion: {verdict}: {summary['promotion']['reason']}")
    if summary.get("plot"):
        print(f"report: {summary['plot']}")


def _row(metrics: dict, status: str, location: str | None) -> dict:
    before = metrics.get("dev_score_before")
    return {"model": metrics["model"], "type": metrics["type"], "status": status,
            "dev_score_before": before, "dev_score": metrics["dev"]["score"], "location": location}


def format_table(rows: list[dict]) -> str:
    """A plain-text comparison table: model, type, status, score before/after training, location."""
    def cell(value) -> str:
        return f"{value:.2f}" if isinstance(value, float) else ("-" if value is None else str(value))

    cols = ["model", "type", "status", "dev_score_before", "dev_score", "location"]
    cols = [c for c in cols if any(r.get(c) is not None for r in rows)]
    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)


def _predict(args: argparse.Namespace) -> int:
    if str(args.run) == "champion":
        from dialsum.champion_cli import predict_command

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


def _build_tiny(args: argparse.Namespace) -> int:
    from dialsum.config import load_model_config
    from dialsum.models import checkpoint_source

    for name in args.models:
        cfg = load_model_config(name)
        if cfg.tiny is None:
            raise DialsumError(f"{name} is not a tiny profile (no `tiny` section)")
        print(f"{name}: {checkpoint_source(cfg)}")
    return 0


def _sample_data(args: argparse.Namespace) -> int:
    from dialsum.sample_data import write_sample

    write_sample(args.out)
    print(f"wrote train.csv, dev.csv and test.csv to {args.out}")
    return 0


def _preflight(args: argparse.Namespace) -> int:
    from dialsum.preflight import format_report, run

    reports, problems = run(args.models, data_dir=args.data, tokenizers=args.tokenizer or ())
    print("\n\n".join(format_report(r) for r in reports))
    if problems and not args.force:
        print("dialsum: preflight: " + "; ".join(problems), file=sys.stderr)
        return 1
    for line in problems:
        print(f"dialsum: preflight: {line} (going on: --force)", file=sys.stderr)
    return 0


def _add_preflight_parser(sub) -> None:
    p = sub.add_parser("preflight", help="check lengths, cuts, reachable references and round trips (tokenizer only)")
    p.add_argument("--models", nargs="+", required=True, help="config stems in configs/models/ or YAML paths")
    p.add_argument("--data", type=Path, help="folder with train/dev/test CSVs, any present (default: bundled sample)")
    p.add_argument("--tokenizer", nargs="+", metavar="[MODEL=]PATH", help="use a local tokenizer folder for a model")
    p.add_argument("--force", action="store_true", help="exit 0 even when references are unreachable")
    p.set_defaults(func=_preflight)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True, help="config stems in configs/models/ or YAML paths")
    p.add_argument("--data", type=Path, help="folder with train.csv, dev.csv, test.csv (default: bundled sample)")
    p.add_argument("--debug", action="store_true", help="a few steps on a small slice")
    p.add_argument("--eval-before", action="store_true", help="also score the untrained model on dev")
    p.add_argument("--storage", help="publish to this URL (s3://bucket/prefix or a folder); default DIALSUM_STORAGE_URL")
    p.add_argument("--run-id", help="run id (default: time-based)")
    p.add_argument("--force", action="store_true",
                   help="single: go on when preflight finds unreachable references, overwrite a published run with "
                        "different content; multi_model/train-all: also retrain when data, config and code are unchanged")
    p.add_argument("--resume", metavar="RUN_ID",
                   help="continue that run from its finished phases and newest checkpoint (local or in storage)")
    p.add_argument("--promote", choices=["never", "if-better", "always"], default="never",
                   help="make the run's ensemble the champion: never (default), if-better, always")
    p.add_argument("--margin", type=float, default=0.0, help="dev score points a challenger must gain (if-better)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dialsum", description="Fine-tune and ship Korean dialogue summarizers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train, predict, score and publish one or more models")
    p.add_argument("--mode", choices=["single", "multi_model"], default="single")
    p.add_argument("--gpus", type=int, default=1, help="train one model data-parallel on this many GPUs (accelerate launch)")
    _add_train_args(p)
    p.set_defaults(func=_train)
    p = sub.add_parser("train-all", help="run the train-all flow embedded (no server): one child per model + ensemble")
    _add_train_args(p)
    p.set_defaults(func=_train_all)
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
    p = sub.add_parser("build-tiny", help="build tiny random-weight models and tokenizers locally")
    p.add_argument("--models", nargs="+", default=["tiny-bart", "tiny-llama", "tiny-qwen3"])
    p.set_defaults(func=_build_tiny)
    p = sub.add_parser("sample-data", help="regenerate the bundled sample dataset")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_sample_data)
    _add_preflight_parser(sub)
    _register_optional(sub)
    return parser


def _register_optional(sub) -> None:
    from dialsum import champion_cli, storage_cli

    storage_cli.register(sub)
    champion_cli.register(sub)
    p = sub.add_parser("worker", add_help=False, help="Create a work pool from infra/ and start a Prefect worker on it.")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_worker)


def _worker(args: argparse.Namespace) -> int:
    """`dialsum worker …`, parsed by the worker module, imported (with Prefect) only for this command."""
    from dialsum import worker

    parser = argparse.ArgumentParser(prog="dialsum")
    worker.register(parser.add_subparsers(dest="command", required=True))
    real = parser.parse_args(["worker", *args.rest])
    return real.func(real) or 0


def _configure_logging(verbose: bool) -> None:
    from dialsum.console import configure

    configure(verbose)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.func is _worker:
        args.rest = [*unknown, *args.rest]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except DialsumError as exc:
        print(f"dialsum: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
