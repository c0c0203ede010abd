"""The `dialsum` console script: the one entry point for users, flows and images.

The parser is assembled from one module per command group; every command imports what it needs (torch,
Prefect) only when it runs, so `--help` and input errors stay fast. A `DialsumError` is one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from dialsum.cli import artifacts, champion, data, predict, profiles, sweep, train
from dialsum.errors import DialsumError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dialsum", description="Fine-tune and ship Korean dialogue summarizers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (train, predict, data, profiles, artifacts, champion, sweep):
        group.register(sub)
    p = sub.add_parser("worker", add_help=False, help="Create a work pool from infra/ and start a Prefect worker on it.")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_worker)
    return parser


def _worker(args: argparse.Namespace) -> int:
    """`dialsum worker …`, parsed by the worker module, imported (with Prefect) only for this command."""
    from dialsum.orchestration import worker

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
