"""`--resume RUN_ID` alone continues a run: the models, mode, `--set`/`--overlay` overrides, data, `--debug` and
`--eval-before` it was started with are read back from its record in storage (`state.runs.write_command`).
An argument given again must agree with the record; one that does not is one line naming the key and both values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dialsum.errors import ConfigError


def data_value(data) -> str | None:
    """`--data` as recorded: a storage URL as given, a folder as an absolute path, None for the bundled sample."""
    from dialsum.data.source import is_url

    if data is None:
        return None
    return str(data) if is_url(str(data)) else str(Path(data).resolve())


def record_of(args: argparse.Namespace, mode: str) -> dict:
    """What a new run records about the command that starts it (after `checks.training` resolved the overrides)."""
    return {
        "mode": mode,
        "models": list(args.models),
        "overrides": list(args.overrides),
        "data": data_value(args.data),
        "debug": bool(args.debug),
        "eval_before": bool(args.eval_before),
    }


def _keyed(overrides: list[str]) -> dict[str, str]:
    return dict(o.partition("=")[::2] for o in overrides)


def _run_control(override: str) -> bool:
    from dialsum.config.chat_api import RUN_CONTROL

    return override.partition("=")[0].split(".")[0] in RUN_CONTROL


def _override_conflict(run_id: str, recorded: list[str], given: list[str]) -> str | None:
    """The first key set differently now than when the run started; keys that only say how to call an API
    (`RUN_CONTROL`: a larger budget, more failures allowed) may change."""
    old, new = _keyed(recorded), _keyed(given)
    for key in [*old, *(k for k in new if k not in old)]:
        if _run_control(key):
            continue
        if old.get(key) != new.get(key):
            return (
                f"--resume {run_id}: --set {key} was {old.get(key, '(not set)')} when the run started, "
                f"{new.get(key, '(not set)')} now; drop the --set/--overlay options to continue with the "
                "run's own, or start a new run"
            )
    return None


def fill(args: argparse.Namespace, command: str) -> None:
    """With `--resume RUN_ID`, complete `args` from the run's record and refuse a contradiction; without one (or
    without a record), only check that `--models` was given."""
    from dialsum import storage
    from dialsum.cli import checks
    from dialsum.cli.profiles import overrides_of
    from dialsum.state import runs

    record = None
    if args.resume:
        record = runs.read_command(storage.check_name(args.resume, "run id"), checks.opened_storage(args))
    if record is None:
        if not args.models:
            hint = f" (run {args.resume} has no record of its models)" if args.resume else ""
            raise ConfigError(f"{command}: --models is required{hint}")
        if getattr(args, "mode", "single") is None:
            args.mode = "single"
        return
    run_id, mode = args.resume, record.get("mode", "single")
    wanted = getattr(args, "mode", None) or ("multi_model" if command == "train-all" else mode)
    if wanted != mode:
        raise ConfigError(
            f"--resume {run_id}: the run was started with --mode {mode}, not {wanted}; continue it "
            f"with `dialsum train --resume {run_id}`"
        )
    if hasattr(args, "mode"):
        args.mode = mode
    if args.models and list(args.models) != record["models"]:
        raise ConfigError(
            f"--resume {run_id}: --models was {' '.join(record['models'])} when the run started, "
            f"{' '.join(args.models)} now; drop --models to continue the run's own"
        )
    args.models = list(record["models"])
    given = overrides_of(args)
    asked = [o for o in given if not _run_control(o)]  # a larger budget alone needs no other --set repeated
    if asked and (line := _override_conflict(run_id, record.get("overrides", []), asked)):
        raise ConfigError(line)
    recorded = [o for o in record.get("overrides", []) if not _run_control(o)]
    args.overrides, args.overlays = recorded + [o for o in given if _run_control(o)], []
    if args.data is not None and data_value(args.data) != record.get("data"):
        raise ConfigError(
            f"--resume {run_id}: --data was {record.get('data') or '(the bundled sample)'} when the "
            f"run started, {args.data} now; drop --data to continue with the run's own"
        )
    if record.get("data") is not None:
        args.data = record["data"] if "://" in record["data"] else Path(record["data"])
    for flag, key in (("--debug", "debug"), ("--eval-before", "eval_before")):
        if getattr(args, key) and not record.get(key):
            raise ConfigError(f"--resume {run_id}: the run was started without {flag}; drop it to continue the run")
        setattr(args, key, bool(record.get(key)))
