"""`sweep`, `kfold` and `tune-decoding`: an Optuna study over a model's config, K-fold cross-validation, and a
decoding search on a saved model. Inputs are checked before Prefect or torch is imported."""

from __future__ import annotations

import argparse
from pathlib import Path

from dialsum.cli import checks
from dialsum.cli.profiles import add_override_args, overrides_of
from dialsum.errors import DialsumError

SWEEP_EXAMPLE = """\
examples:
  dialsum sweep --models qwen3-4b --space configs/sweeps/qwen3-4b.yaml --trials 16 --parallel 4 --gpus 4
  dialsum sweep --models tiny-bart --space configs/sweeps/tiny-bart.yaml --trials 8 --parallel 2 --debug
  dialsum sweep --models qwen3-4b --study qwen3-4b-night1 --trials 16 --gpus 4      # continue a study
  dialsum train --models qwen3-4b --overlay best.yaml                              # train the best trial again

Without --target, trials run as local processes (one per GPU with --gpus); with --target docker-gpu (or
process-gpu, k8s, ...) they are train-model runs on that target's deployment, one per GPU queue, through the
Prefect server at PREFECT_API_URL. The study lives in sweeps/<study>/ of the storage, with trials.csv,
best.yaml, history.png and importance.png once it ends."""

KFOLD_EXAMPLE = """\
examples:
  dialsum kfold --models kobart --k 5 --parallel 4 --gpus 4 --data path/to/data
  dialsum kfold --models tiny-bart --k 3 --parallel 2 --debug

Writes kfold/<run>/ in the storage: folds.json (seed, k, train.csv hash, the fold of every fname),
oof.csv (out-of-fold predictions of every train row), kfold.json (pooled OOF score with its interval, per-fold
scores, the fold ensemble's dev score) and predictions/dev.csv, predictions/test.csv of the fold ensemble."""

TUNE_EXAMPLE = """\
examples:
  dialsum tune-decoding --run outputs/20250101-030000-ab12cd/kobart --data path/to/data --trials 20
  dialsum tune-decoding --run outputs/<run-id>/qwen3-4b --space configs/sweeps/decoding.yaml --rows 200

Loads the saved model once and searches generation settings (num_beams, length_penalty,
no_repeat_ngram_size, max_new_tokens by default) on the selection part of the run's dev split; the best setting
is scored once on the held-out part with an interval. Writes decoding.yaml (an overlay for --overlay), trials.csv and
decoding.json into --out (default: <run>/decoding/)."""


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_fanout(sub, name: str, summary: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A command that fans out train-model children of one model (`sweep`, `kfold`), with their shared options."""
    p = sub.add_parser(name, help=summary, description=description, epilog=epilog, formatter_class=_formatter)
    _add_common(p)
    return p


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, metavar="MODEL", help="config stem in configs/models/ or a YAML path")
    p.add_argument(
        "--data",
        type=checks.location,
        help="folder or storage URL with train.csv, dev.csv, test.csv (default: bundled sample)",
    )
    p.add_argument("--storage", help="storage URL or folder (default DIALSUM_STORAGE_URL)")
    p.add_argument("--debug", action="store_true", help="each child runs a few steps on a small slice")
    p.add_argument("--parallel", type=int, default=None, help="children running at once (default: --gpus, else 1)")
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs on this box: one child per GPU (embedded: CUDA_VISIBLE_DEVICES; targets: GPU queues)",
    )
    p.add_argument(
        "--target",
        default=None,
        help="run children on this target's train-model deployment (process, process-gpu, docker-gpu, "
        "docker-cpu, k8s) through PREFECT_API_URL; default: local processes",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler or the fold assignment (default 0)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    add_override_args(p)


def register(sub) -> None:
    p = _add_fanout(
        sub,
        "sweep",
        "an Optuna study over one model's config, one train-model child per trial",
        "Search a model's config keys with Optuna (TPE, pruned on the evaluation curve).",
        SWEEP_EXAMPLE,
    )
    p.add_argument(
        "--space", type=Path, help="search-space YAML (configs/sweeps/*.yaml); not needed to continue a study"
    )
    p.add_argument("--trials", type=int, default=8, help="trials in the study, whatever their outcome (default 8)")
    p.add_argument("--study", help="study name: continue it if it exists in the storage (default: model and time)")
    p.set_defaults(func=_sweep)

    p = _add_fanout(
        sub,
        "kfold",
        "K-fold cross-validation: one child per fold, OOF predictions, fold ensemble",
        "Train one child per fold of train.csv (stratified by dialogue length, grouped by a `group` column "
        "when present) and score the out-of-fold predictions.",
        KFOLD_EXAMPLE,
    )
    p.add_argument("--k", type=int, default=5, help="folds (default 5)")
    p.add_argument("--run-id", help="K-fold run id (default: time-based); the same id continues it")
    p.set_defaults(func=_kfold)

    p = sub.add_parser(
        "tune-decoding",
        help="search generation settings on a saved model, scored on dev",
        description="A cheap study over decoding settings of a saved run: no retraining.",
        epilog=TUNE_EXAMPLE,
        formatter_class=_formatter,
    )
    p.add_argument("--run", type=Path, required=True, help="a saved run folder (outputs/<run-id>/<model>)")
    p.add_argument("--data", type=checks.location, help="folder or storage URL with dev.csv (default: bundled sample)")
    p.add_argument("--space", type=Path, help="YAML of generation.* keys to search (default: the built-in space)")
    p.add_argument("--trials", type=int, default=16, help="decoding settings to try (default 16)")
    p.add_argument("--rows", type=int, default=None, help="dev rows of the search split (default: all of it)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0); the dev split is the run's own")
    p.add_argument("--out", type=Path, help="output folder (default: <run>/decoding)")
    p.set_defaults(func=_tune_decoding)


def _check_data(data: str | Path | None) -> None:
    checks.data(data)


def _placement_options(args: argparse.Namespace) -> dict:
    args.parallel = args.parallel if args.parallel is not None else (args.gpus or 1)
    if args.parallel < 1:
        raise DialsumError(f"--parallel must be at least 1, got {args.parallel}")
    if args.target is not None:
        from dialsum.orchestration.placement import get_target
        from dialsum.settings import get_settings

        get_target(args.target)
        if not get_settings().prefect_api_url:
            raise DialsumError(
                f"--target {args.target} launches deployments: set PREFECT_API_URL to the Prefect "
                "server, or leave out --target to run the children as local processes"
            )
    return {"target": args.target or "process", "num_gpus": args.gpus, "embedded": args.target is None}


def _flow_options(args: argparse.Namespace) -> dict:
    """The keyword arguments `sweep` and `kfold` both pass to their flow: placement, data, storage and settings."""
    placement = _placement_options(args)
    return {
        "parallel": args.parallel,
        "data_dir": str(args.data) if args.data else None,
        "storage_url": args.storage,
        "debug": args.debug,
        "seed": args.seed,
        "overrides": args.overrides,
        "poll_seconds": args.poll_seconds,
        **placement,
    }


def _sweep(args: argparse.Namespace) -> int:
    from dialsum.tuning.space import load_space

    args.overrides = overrides_of(args)
    if args.trials < 1:
        raise DialsumError(f"--trials must be at least 1, got {args.trials}")
    if args.space is None and args.study is None:
        raise DialsumError("--space is needed to start a study (--study NAME alone continues one)")
    space = str(args.space) if args.space else None
    if space:
        load_space(space, args.models, args.overrides)
    _check_data(args.data)
    options = _flow_options(args)
    from dialsum.orchestration.sweep import run_embedded
    from dialsum.tuning.outputs import format_table

    summary = run_embedded(args.models, space=space, trials=args.trials, study=args.study, **options)
    if summary.get("status") == "stopped":
        lines = [f"trial {t['trial']} ({t['run_id']}): {t['where']}" for t in summary["stopped"]]
        return _print_stopped(lines, ["sweep", "--study", summary["study"], "--trials", str(args.trials)], args)
    print(format_table(summary["rows"], summary["params"]))
    best = summary["best"]
    if best:
        print(f"best: trial {best['trial']} ({best['value']:.4f}); overlay {summary['best_yaml']}")
    else:
        print("no trial completed")
    print(f"study {summary['study']}: {summary['location']}")
    return 0


def _kfold(args: argparse.Namespace) -> int:
    from dialsum.config import load_model_config

    args.overrides = overrides_of(args)
    if args.k < 2:
        raise DialsumError(f"--k must be at least 2, got {args.k}")
    load_model_config(args.models, args.overrides)
    _check_data(args.data)
    options = _flow_options(args)
    from dialsum.orchestration.kfold import format_summary, run_embedded

    summary = run_embedded(args.models, k=args.k, run_id=args.run_id, **options)
    if summary.get("status") == "stopped":
        lines = [f"{run_id}: {where}" for run_id, where in summary["stopped"].items()]
        return _print_stopped(lines, ["kfold", "--k", str(args.k), "--run-id", summary["run_id"]], args)
    print(format_summary(summary))
    return 0 if not summary["failed"] else 1


def _print_stopped(lines: list[str], command: list[str], args: argparse.Namespace) -> int:
    """After Ctrl-C or SIGTERM: one line per interrupted child, and the command that continues; 130 (143)."""
    import shlex
    import sys

    from dialsum.state import stop

    for line in lines:
        print(f"dialsum: {line}", file=sys.stderr)
    command = ["dialsum", command[0], "--models", args.models, *command[1:]]
    for flag, value in (
        ("--parallel", args.parallel),
        ("--gpus", args.gpus),
        ("--target", args.target),
        ("--data", args.data),
        ("--storage", args.storage),
        ("--seed", args.seed or None),
    ):
        command += [flag, str(value)] if value is not None else []
    command += ["--debug"] if args.debug else []
    command += [arg for override in args.overrides for arg in ("--set", override)]
    print(f"dialsum: stopped; continue with: {shlex.join(command)}", file=sys.stderr)
    return stop.exit_code()


def _tune_decoding(args: argparse.Namespace) -> int:
    if args.trials < 1:
        raise DialsumError(f"--trials must be at least 1, got {args.trials}")
    if not (args.run / "config.yaml").is_file():
        raise DialsumError(f"{args.run}: not a saved run folder (no config.yaml)")
    from dialsum.config import load_model_config
    from dialsum.tuning.space import load_space

    model = str(args.run / "config.yaml")
    load_model_config(model)
    if args.space is not None:
        load_space(args.space, model, prefix="generation.")
    args.data = checks.fetched(args.data)
    checks.data(args.data, splits=("dev",), optional=())
    from dialsum.pipeline.decoding_search import format_summary, tune_decoding

    summary = tune_decoding(
        args.run,
        data_dir=args.data,
        space=args.space,
        trials=args.trials,
        rows=args.rows,
        seed=args.seed,
        out_dir=args.out,
    )
    print(format_summary(summary))
    return 0
