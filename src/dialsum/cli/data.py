"""Commands about data and tokenizers before training: `preflight`, `sample-data` and `build-tiny`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dialsum.cli import checks
from dialsum.cli.profiles import add_override_args, overrides_of
from dialsum.errors import DialsumError


def register(sub) -> None:
    p = sub.add_parser("build-tiny", help="build tiny random-weight models and tokenizers locally")
    p.add_argument("--models", nargs="+", default=["tiny-bart", "tiny-llama", "tiny-qwen3"])
    p.set_defaults(func=_build_tiny)
    p = sub.add_parser("sample-data", help="regenerate the bundled sample dataset")
    p.add_argument("--out", type=Path, required=True, help="folder to write train.csv, dev.csv and test.csv into")
    p.set_defaults(func=_sample_data)
    _add_preflight_parser(sub)


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
    from dialsum.data.synthetic import write_sample

    checks.destination(args.out, "output")

    write_sample(args.out)
    print(f"wrote train.csv, dev.csv and test.csv to {args.out}")
    return 0


def _preflight(args: argparse.Namespace) -> int:
    from dialsum.data import SPLITS

    overrides = overrides_of(args)
    cfgs = checks.models(args.models, overrides)
    args.data = checks.fetched(args.data)
    checks.data(args.data, optional=SPLITS)
    from dialsum.cli.api import preflight_api

    api = preflight_api([c for c in cfgs if not checks.trainable(c)], args.data, args.max_cost_usd)
    trained = [(m, c) for m, c in zip(args.models, cfgs) if checks.trainable(c)]
    args.models = [m for m, _ in trained]
    if not args.models:
        return api
    local = {value.partition("=")[0] if "=" in value else args.models[0] for value in args.tokenizer or ()}
    checks.hub([cfg for name, cfg in trained if name not in local], tokenizer_only=True)
    from dialsum.models.preflight import PreflightFailed, format_report, run

    try:
        reports, problems = run(args.models, data_dir=args.data, tokenizers=args.tokenizer or (), overrides=overrides)
    except PreflightFailed as exc:
        print("\n\n".join(format_report(r) for r in exc.reports))
        raise
    print("\n\n".join(format_report(r) for r in reports))
    if problems and not args.force:
        print("dialsum: preflight: " + "; ".join(problems), file=sys.stderr)
        return 1
    for line in problems:
        print(f"dialsum: preflight: {line} (going on: --force)", file=sys.stderr)
    return api


def _add_preflight_parser(sub) -> None:
    p = sub.add_parser("preflight", help="check lengths, cuts, reachable references and round trips (tokenizer only)")
    p.add_argument("--models", nargs="+", required=True, help="config stems in configs/models/ or YAML paths")
    p.add_argument(
        "--data",
        type=checks.location,
        help="folder or storage URL with train/dev/test CSVs, any present (default: bundled sample)",
    )
    p.add_argument("--tokenizer", nargs="+", metavar="[MODEL=]PATH", help="use a local tokenizer folder for a model")
    p.add_argument("--force", action="store_true", help="exit 0 even when references are unreachable")
    p.add_argument(
        "--max-cost-usd",
        type=float,
        metavar="USD",
        help="API profiles: exit 1 when the estimated cost passes this (default: the profile's max_cost_usd)",
    )
    add_override_args(p)
    p.set_defaults(func=_preflight)
