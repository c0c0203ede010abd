"""The `dialsum` console script: the one entry point for users, flows and images.

The parser is assembled from one module per command group; every command imports what it needs (torch,
Prefect) only when it runs, so `--help` and input errors stay fast. A `DialsumError`, and an OS error on a
path the user chose (a read-only folder, a missing file), is one line and exit 2. Ctrl-C stops a run at its
next safe point with one line per model and exit 130 (`state.stop`); SIGTERM does the same, with exit 143.
Every process a command starts watches it and ends when it is gone (`engine.lifeline`).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from importlib import metadata

from dialsum.cli import artifacts, champion, data, predict, profiles, sweep, train
from dialsum.engine import lifeline
from dialsum.errors import DialsumError
from dialsum.state import stop

USER_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENAMETOOLONG,
    errno.ENOTEMPTY,
}


def version() -> str:
    try:
        return metadata.version("dialsum")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"dialsum {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dialsum", description="Fine-tune and ship Korean dialogue summarizers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (train, predict, data, profiles, artifacts, champion, sweep):
        group.register(sub)
    p = sub.add_parser(
        "worker", add_help=False, help="Create a work pool from infra/ and start a Prefect worker on it."
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_worker)
    p = sub.add_parser("completion", help='print a shell completion script: eval "$(dialsum completion bash)"')
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    p.set_defaults(func=_completion)
    return parser


def _worker(args: argparse.Namespace) -> int:
    """`dialsum worker …`, parsed by the worker module, imported (with Prefect) only for this command."""
    from dialsum.orchestration import worker

    parser = argparse.ArgumentParser(prog="dialsum")
    worker.register(parser.add_subparsers(dest="command", required=True))
    real = parser.parse_args(["worker", *args.rest])
    return real.func(real) or 0


def _completion(args: argparse.Namespace) -> int:
    import shtab

    preamble = {
        "bash": '_dialsum_models() { compgen -W "$(dialsum models --names 2>/dev/null)" -- "$1"; }',
        "zsh": '_dialsum_models() { compadd -- ${(f)"$(dialsum models --names 2>/dev/null)"}; }',
    }
    print(shtab.complete(build_parser(), args.shell, preamble=preamble))
    return 0


def _configure_logging(verbose: bool) -> None:
    from dialsum.console import configure

    configure(verbose)


def os_error_line(exc: OSError) -> str | None:
    """One line for an OS error a user can fix (permissions, a read-only or full disk, a missing path)."""
    if exc.errno not in USER_ERRNOS or not exc.filename:
        return None
    target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
    return f"{target}: {exc.strerror or os.strerror(exc.errno)}"


def exit_stopped(code: int) -> int:
    """A command that a signal stopped has said where it stopped: finish what must be finished (Prefect's last
    log lines, the `atexit` callbacks: the temporary API server among them) and exit now, without the seconds a
    large interpreter (torch, Prefect) takes to tear itself down. Returns `code` when no signal came (a test)."""
    if not stop.signalled():
        return code
    import atexit
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    atexit._run_exitfuncs()
    logging.shutdown()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    lifeline.watch_parent()  # a data-parallel rank (or any dialsum a dialsum process started) ends with its parent
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.func is _worker:
        args.rest = [*unknown, *args.rest]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _configure_logging(args.verbose)
    stop.clear()
    try:
        with stop.on_signals():
            code = args.func(args)
        return exit_stopped(code) if stop.requested() else code
    except stop.Interrupted as exc:
        print(f"dialsum: {exc}", file=sys.stderr)
        return exit_stopped(stop.exit_code())
    except DialsumError as exc:
        print(f"dialsum: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dialsum: stopped ({stop.cause()})", file=sys.stderr)
        return exit_stopped(stop.exit_code())
    except OSError as exc:
        if (line := os_error_line(exc)) is None:
            raise
        print(f"dialsum: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
