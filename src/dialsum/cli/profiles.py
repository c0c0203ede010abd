"""Model profiles on the command line: `dialsum models` lists them (family, one line on what each trains, where the
file comes from: shipped with the package, ./configs or DIALSUM_CONFIG_DIR), `dialsum config show` prints one as it
resolves, and `--set` / `--overlay` are the override options every command taking `--models` shares."""

from __future__ import annotations

import argparse
from pathlib import Path

from dialsum.errors import ConfigError


def add_override_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key of every model, e.g. --set training.learning_rate=1e-4 "
        "--set model=/path/to/checkpoint (repeatable; the value is read as YAML)",
    )
    p.add_argument(
        "--overlay",
        dest="overlays",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a YAML file of config keys to override, e.g. a sweep's best.yaml (applied before --set)",
    )


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The overlays' keys, then the `--set` ones, as `KEY=VALUE` strings (a later one wins)."""
    from dialsum.config import overlay_overrides

    return [o for path in getattr(args, "overlays", []) for o in overlay_overrides(path)] + list(args.overrides)


def register(sub) -> None:
    _register_models(sub)
    p = sub.add_parser("config", help="show a model profile as it resolves (base defaults, the YAML, overrides)")
    commands = p.add_subparsers(dest="config_command", required=True)
    show = commands.add_parser(
        "show",
        help="print the resolved config of a profile as YAML",
        description="Print the config a run of MODEL would use, overrides applied, e.g. "
        "`dialsum config show qwen3-4b --set lora.r=8`.",
    )
    show.add_argument("model", metavar="MODEL", help="a stem of configs/models/ or a YAML path")
    add_override_args(show)
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from dialsum.config import dump_config, load_model_config

    print(dump_config(load_model_config(args.model, overrides_of(args))), end="")
    return 0


def _register_models(sub) -> None:
    p = sub.add_parser("models", help="list the model profiles: family, what each trains, where it comes from")
    p.add_argument("--names", action="store_true", help="profile names only, one a line")
    p.set_defaults(func=_models)


def describe(cfg) -> str:
    """One line on what a profile is, from its family (`models.families`)."""
    from dialsum.models import families

    return families.of(cfg).describe(cfg)


def origin(path: Path) -> str:
    from dialsum.config import packaged_configs

    folder = path.resolve().parent.parent
    if folder == packaged_configs().resolve():
        return "shipped"
    if folder == Path("configs").resolve():
        return "./configs"
    return str(path.parent.parent)


def _models(args: argparse.Namespace) -> int:
    from dialsum.config import available_models, load_model_config, resolve_model_path

    names = available_models()
    if args.names:
        print("\n".join(names))
        return 0
    rows = [("profile", "family", "what", "from")]
    for name in names:
        try:
            cfg = load_model_config(name)
            rows.append((name, cfg.type, describe(cfg), origin(resolve_model_path(name))))
        except ConfigError as exc:
            rows.append((name, "?", f"invalid: {exc}", origin(resolve_model_path(name))))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0
