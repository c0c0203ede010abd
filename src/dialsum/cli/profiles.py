"""Model profiles: `dialsum models` lists them, with their family, one line on what each trains, and where
the file comes from (shipped with the package, ./configs or DIALSUM_CONFIG_DIR)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dialsum.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model profiles: family, what each trains, where it comes from")
    p.add_argument("--names", action="store_true", help="profile names only, one a line")
    p.set_defaults(func=_models)


def describe(cfg) -> str:
    """One line on what a profile trains: its checkpoint (or tiny architecture) and how it is fine-tuned."""
    if cfg.tiny is not None:
        source = f"tiny {cfg.tiny.arch} built locally, random weights ({cfg.tiny.hidden_size} wide)"
    else:
        source = cfg.model + (f"@{cfg.revision}" if cfg.revision else "")
    if cfg.lora is None:
        how = "full fine-tuning"
    else:
        adapters = f"LoRA r{cfg.lora.r}/alpha {cfg.lora.alpha} on {len(cfg.lora.target_modules)} modules"
        quant = cfg.quantization
        how = f"QLoRA: {quant.quant_type} 4-bit base, {adapters}" if quant and quant.load_in_4bit else adapters
    return f"{source}; {how}"


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
