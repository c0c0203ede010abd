"""Model profiles on the command line: `dialsum config show`, and the `--set` / `--overlay` options that every
command taking `--models` shares."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_override_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of every model, e.g. --set training.learning_rate=1e-4 "
                        "--set model=/path/to/checkpoint (repeatable; the value is read as YAML)")
    p.add_argument("--overlay", dest="overlays", action="append", default=[], type=Path, metavar="FILE",
                   help="a YAML file of config keys to override, e.g. a sweep's best.yaml (applied before --set)")


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The overlays' keys, then the `--set` ones, as `KEY=VALUE` strings (a later one wins)."""
    from dialsum.config import overlay_overrides

    return [o for path in getattr(args, "overlays", []) for o in overlay_overrides(path)] + list(args.overrides)


def register(sub) -> None:
    p = sub.add_parser("config", help="show a model profile as it resolves (base defaults, the YAML, overrides)")
    commands = p.add_subparsers(dest="config_command", required=True)
    show = commands.add_parser("show", help="print the resolved config of a profile as YAML",
                               description="Print the config a run of MODEL would use, overrides applied, e.g. "
                                           "`dialsum config show qwen3-4b --set lora.r=8`.")
    show.add_argument("model", metavar="MODEL", help="a stem of configs/models/ or a YAML path")
    add_override_args(show)
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from dialsum.config import dump_config, load_model_config

    print(dump_config(load_model_config(args.model, overrides_of(args))), end="")
    return 0
