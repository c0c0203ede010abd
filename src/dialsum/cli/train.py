"""`train` and `train-all`: one model in this process (or data-parallel), or several through the train-all flow."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from dialsum.cli import checks, resume
from dialsum.cli.champion import add_margin_arg
from dialsum.cli.profiles import add_override_args
from dialsum.errors import DialsumError
from dialsum.pipeline.result import ModelRow, TrainAllSummary, rows_of
from dialsum.release.registry import NIGHTLY_CONFIDENCE
from dialsum.state import stop


def register(sub) -> None:
    p = sub.add_parser("train", help="train, predict, score and publish one or more models")
    p.add_argument("--mode", choices=["single", "multi_model"], help="single (default) or multi_model")
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="train one model data-parallel on this many GPUs (on a CPU-only machine: this many gloo processes)",
    )
    _add_train_args(p)
    p.set_defaults(func=_train)
    p = sub.add_parser("train-all", help="run the train-all flow embedded (no server): one child per model + ensemble")
    _add_train_args(p)
    p.set_defaults(func=_train_all)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models", nargs="+", help="config stems in configs/models/ or YAML paths (with --resume: the run's)"
    )
    p.add_argument(
        "--data",
        type=checks.location,
        help="folder or storage URL with train.csv, dev.csv, test.csv (default: bundled sample)",
    )
    p.add_argument("--debug", action="store_true", help="a few steps on a small slice")
    p.add_argument("--eval-before", action="store_true", help="also score the untrained model on dev")
    p.add_argument(
        "--storage", help="publish to this URL (s3://bucket/prefix or a folder); default DIALSUM_STORAGE_URL"
    )
    p.add_argument("--run-id", help="run id (default: time-based)")
    p.add_argument(
        "--force",
        action="store_true",
        help="single: go on when preflight finds unreachable references, overwrite a published run with "
        "different content; multi_model/train-all: also retrain when data, config and code are unchanged",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue that run from its finished phases and newest checkpoint (local or in storage), with "
        "the models, overrides and data it was started with",
    )
    p.add_argument(
        "--promote",
        choices=["never", "if-better", "always"],
        default="never",
        help="make the run's ensemble the champion: never (default), if-better, always",
    )
    add_margin_arg(p, NIGHTLY_CONFIDENCE, "the ensemble's")
    add_override_args(p)


def _resume_run_id(args: argparse.Namespace) -> None:
    """`--resume RUN_ID` continues that run: it becomes the run id (and may not contradict --run-id)."""
    if args.resume:
        if args.run_id and args.run_id != args.resume:
            raise DialsumError(f"--resume {args.resume} and --run-id {args.run_id} name different runs")
        args.run_id = args.resume


def _train(args: argparse.Namespace) -> int:
    resume.fill(args, "train")
    if args.gpus > 1 and (args.mode != "single" or len(args.models) != 1):
        raise DialsumError("--gpus trains one model on several GPUs: use --mode single with one model")
    if args.mode != "single":
        return _train_all(args)
    if len(args.models) != 1:
        raise DialsumError(f"--mode single takes one model, got {len(args.models)}; use --mode multi_model")
    if args.promote != "never":
        raise DialsumError(
            "--promote applies to --mode multi_model and train-all (the run's ensemble); "
            "promote a single run with `dialsum champion promote RUN_ID/MODEL`"
        )
    _resume_run_id(args)
    names = checks.training(args)
    with checks.leases(args, names):
        if args.run_id is None and "WORLD_SIZE" not in os.environ:
            from dialsum import storage

            args.run_id = storage.new_run_id()  # known here, for the line that says how to continue after a stop
        stop.continue_with(f"--resume {args.run_id}" if args.run_id else None)
        if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
            return _train_data_parallel(args)
        from dialsum.pipeline import run_model

        try:
            result = run_model(
                args.models[0],
                data_dir=checks.fetched(args.data),
                store=checks.opened_storage(args),
                **_run_options(args),
            )
        except stop.Interrupted as exc:
            return _print_interrupted(args, names[0], exc)
    if result.metrics:  # data-parallel ranks other than 0 report nothing
        row = ModelRow.published(result.metrics["model"], result.metrics, result.location, status=result.status)
        print(format_table([row]))
    return 0


def _run_options(args: argparse.Namespace) -> dict:
    """The options `train` and `train-all` both pass on to the run: its id, how it trains, where it publishes."""
    return {
        "run_id": args.run_id,
        "debug": args.debug,
        "eval_before": args.eval_before,
        "storage_url": args.storage,
        "force": args.force,
        "resume": bool(args.resume),
        "overrides": args.overrides,
    }


def _print_interrupted(args: argparse.Namespace, name: str, exc: stop.Interrupted) -> int:
    """A single run of `name` stopped by Ctrl-C or SIGTERM: where it stopped, and how to continue when anything was
    kept."""
    from dialsum.state import runs

    if int(os.environ.get("RANK", "0")) > 0:  # a data-parallel rank: rank 0 says it, the launching process continues
        return stop.exit_code()
    print(f"dialsum: {exc}", file=sys.stderr)
    if "WORLD_SIZE" in os.environ:
        return stop.exit_code()
    if runs.has_progress(args.run_id, name, checks.opened_storage(args)):
        print(f"dialsum: stopped; continue with --resume {args.run_id}", file=sys.stderr)
    else:
        print("dialsum: stopped before anything was saved: nothing to resume; run the command again", file=sys.stderr)
    return stop.exit_code()


def _train_data_parallel(args: argparse.Namespace) -> int:
    """`train --gpus N`: the pipeline's data-parallel launch (`pipeline.launch_on_gpus`) under one run id."""
    import torch

    from dialsum import storage
    from dialsum.pipeline import launch_on_gpus

    run_id = args.run_id or storage.new_run_id()
    if not torch.cuda.is_available():
        print(
            f"dialsum: no GPU found: --gpus {args.gpus} runs {args.gpus} data-parallel CPU processes", file=sys.stderr
        )
    code = launch_on_gpus(
        args.models[0],
        args.gpus,
        run_id,
        args.data,
        args.debug,
        args.eval_before,
        args.storage,
        args.overrides,
        force=args.force,
        verbose=args.verbose,
    )
    if stop.requested():
        print(f"dialsum: stopped; continue with --resume {run_id}", file=sys.stderr)
        return stop.exit_code()
    return code


def _train_all(args: argparse.Namespace) -> int:
    if args.func is _train_all:  # `train --mode multi_model` comes here filled already
        resume.fill(args, "train-all")
    _resume_run_id(args)
    with checks.leases(args, checks.training(args)):
        from dialsum.orchestration.train_all import run_embedded

        summary = run_embedded(
            args.models,
            data_dir=args.data,
            promote=args.promote,
            margin=args.margin,
            **_run_options(args),
        )
    summary = TrainAllSummary.from_dict(summary)
    if summary.status == "stopped":
        return print_stopped(summary)
    print(format_table(summary.rows))
    print_outcome(summary)
    failed = list(summary.failed)
    if failed:
        print(f"failed models: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def print_stopped(summary: TrainAllSummary | dict) -> int:
    """After Ctrl-C or SIGTERM: one line per model saying where it stopped, and how to continue (when anything was
    kept to continue from); exit code 130 (143 after SIGTERM)."""
    summary = summary if isinstance(summary, TrainAllSummary) else TrainAllSummary.from_dict(summary)
    for row in summary.rows:
        if row.status == "stopped":
            where = row.error
        elif row.status == "failed":
            where = f"failed: {row.error}"
        else:
            where = f"{row.status} (dev score {row.dev_score:.2f}{rows_label(row)})"
        print(f"dialsum: {row.model}: {where}", file=sys.stderr)
    if summary.resumable is not False:
        print(f"dialsum: stopped; continue with --resume {summary.run_id}", file=sys.stderr)
    else:
        print(
            "dialsum: stopped before any model saved anything: nothing to resume; run the command again",
            file=sys.stderr,
        )
    return stop.exit_code()


def print_outcome(summary: TrainAllSummary) -> None:
    """The lines under the table: the ensemble, the promotion decision, the report."""
    if summary.status == "unchanged":
        print("unchanged: data, config and code match an earlier run; nothing was retrained (--force retrains)")
    if summary.status == "already complete":
        print(f"already complete: run {summary.run_id} has every model and its ensemble published; nothing changed")
    if summary.ensemble:
        from dialsum.release.ensemble import EnsembleSummary, strategy_lines

        ens = EnsembleSummary.from_dict(summary.ensemble)
        print(f"ensemble ({ens.choice}): {ens.headline}")
        if ens.strategies:
            print("\n".join(f"  {line}" for line in strategy_lines(ens.as_dict())))
    if summary.promotion:
        verdict = "promoted" if summary.promotion["promoted"] else "not promoted"
        print(f"champion: {verdict}: {summary.promotion['reason']}")
    if summary.plot:
        print(f"report: {summary.plot}")


def rows_label(row: ModelRow) -> str:
    return f" on {row.dev_rows} dev rows" if row.dev_rows else ""


def format_table(rows: Sequence[ModelRow | dict]) -> str:
    """A plain-text comparison table: model, type, status, score before/after training, location. The score
    headers say how many dev rows the scores cover (each cell does when models differ)."""
    rows = rows_of(rows)

    def cell(value) -> str:
        return f"{value:.2f}" if isinstance(value, float) else ("-" if value is None else str(value))

    cols = ["model", "type", "status", "dev_score_before", "dev_score", "location"]
    cols = [c for c in cols if any(getattr(r, c) is not None for r in rows)]
    counts = {r.dev_rows for r in rows if r.dev_score is not None}
    shared = f" ({counts.pop()} rows)" if len(counts) == 1 and None not in counts else ""
    header = [c + shared if c.startswith("dev_score") else c for c in cols]

    def score_cell(r: ModelRow, c: str) -> str:
        text = cell(getattr(r, c))
        return text + (f" ({r.dev_rows} rows)" if not shared and getattr(r, c) is not None and r.dev_rows else "")

    table = [header] + [
        [score_cell(r, c) if c.startswith("dev_score") else cell(getattr(r, c)) for c in cols] for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)
