"""Finding and loading profiles: a model YAML names its family with `type`; `base/<type>.yaml` supplies the
defaults and the model file overrides them (deep merge), then command-line overrides. Profiles ship inside the
package; a `./configs` folder and then `DIALSUM_CONFIG_DIR` add to them or override them, file by file
(`config_dirs`). Errors name the file and the field.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dialsum.config.overrides import apply_overrides
from dialsum.config.schema import (
    ADAPTER,
    FAMILIES,
    NAME_RE,
    CausalLMConfig,
    ChatAPIConfig,
    EncoderDecoderConfig,
)
from dialsum.errors import ConfigError
from dialsum.settings import get_settings


def packaged_configs() -> Path:
    """The profiles shipped inside the package (`configs/` of the repository)."""
    return Path(__file__).resolve().parents[1] / "configs"


def config_dirs() -> list[Path]:
    """Folders that hold profiles, highest priority first: `DIALSUM_CONFIG_DIR`, `./configs` (when it has a
    models/ or base/ folder), then the shipped ones. A file in an earlier folder hides the same file later."""
    configured = get_settings().config_dir
    if configured is not None and not configured.is_dir():
        raise ConfigError(f"DIALSUM_CONFIG_DIR {configured} is not a folder")
    local = Path("configs")
    found = [configured] if configured is not None else []
    if (local / "models").is_dir() or (local / "base").is_dir():
        found.append(local)
    found.append(packaged_configs())
    unique: dict[Path, Path] = {}
    for folder in found:
        unique.setdefault(folder.resolve(), folder)
    return list(unique.values())


def find_config(relative: str) -> Path | None:
    """The highest-priority file `relative` (e.g. models/kobart.yaml) among `config_dirs()`."""
    return next((folder / relative for folder in config_dirs() if (folder / relative).is_file()), None)


def available_models() -> list[str]:
    return sorted({p.stem for folder in config_dirs() for p in (folder / "models").glob("*.yaml")})


def resolve_model_path(name_or_path: str) -> Path:
    """A stem of a file in a models/ folder of `config_dirs()`, or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: config file not found")
        return candidate
    path = find_config(f"models/{name_or_path}.yaml") if NAME_RE.fullmatch(name_or_path) else None
    if path is None:
        available = available_models()
        raise ConfigError(
            f"unknown model {name_or_path!r}{did_you_mean(name_or_path, available)}; available: {', '.join(available)}"
        )
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def did_you_mean(word: str, options: list[str]) -> str:
    """'; did you mean `x`?' for the closest option, or '' when none is close."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def _fields_at(raw_loc: tuple) -> list[str]:
    """Field names valid where an unknown key was found (its parent section)."""
    model: Any = FAMILIES.get(str(raw_loc[0])) if raw_loc else None
    for part in raw_loc[1:-1]:
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return []
        candidates = [info.annotation, *getattr(info.annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(getattr(model, "model_fields", {}))


def _format_error(path: Path, exc: ValidationError, overrides: dict[str, str] | None = None) -> str:
    """One line for all validation errors; an error at a key set on the command line names that `--set`."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"] if x not in FAMILIES]
        hint = did_you_mean(loc[-1], _fields_at(err["loc"])) if err["type"] == "extra_forbidden" and loc else ""
        key = ".".join(loc)
        given = next((text for k, text in (overrides or {}).items() if key == k or key.startswith(k + ".")), None)
        parts.append(f"--set {given}: {err['msg']}" if given else f"{key or '<root>'}: {err['msg']}{hint}")
    return f"{path}: " + "; ".join(parts)


def check_listed_once(names: Sequence[str]) -> None:
    """Each model named once in a run (a repeated one would train twice under one name)."""
    repeated = sorted({m for m in names if list(names).count(m) > 1})
    if repeated:
        raise ConfigError(f"models are listed more than once: {', '.join(repeated)}")


def load_model_config(
    name_or_path: str, overrides: Sequence[str] = ()
) -> EncoderDecoderConfig | CausalLMConfig | ChatAPIConfig:
    """A model profile: its family's base defaults, then the model YAML, then `overrides` (`KEY=VALUE` strings, see
    `apply_overrides`), validated as one config."""
    path = resolve_model_path(name_or_path)
    raw = _read_yaml(path)
    family = raw.get("type")
    if family not in FAMILIES:
        raise ConfigError(f"{path}: type: must be one of {', '.join(repr(f) for f in FAMILIES)}, got {family!r}")
    base_path = find_config(f"base/{family}.yaml")
    merged = deep_merge(_read_yaml(base_path) if base_path is not None else {}, raw)
    merged.setdefault("name", path.stem)
    try:
        given = apply_overrides(merged, overrides, family)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key in ("model", "tokenizer"):  # a local folder given on the command line is recorded as an absolute path
        if key in given and isinstance(merged.get(key), str) and Path(merged[key]).expanduser().exists():
            merged[key] = str(Path(merged[key]).expanduser().resolve())
    if merged.get("chat_template"):  # relative to the YAML, or to the working folder when set on the command line
        root = Path.cwd() if "chat_template" in given else path.parent
        merged["chat_template"] = str((root / merged["chat_template"]).resolve())
    try:
        return ADAPTER.validate_python(merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc, given)) from None


def overlay_overrides(path: Path) -> list[str]:
    """A YAML overlay file (a partial profile, e.g. a sweep's best.yaml) as `KEY=VALUE` overrides, leaf by leaf."""
    data = _read_yaml(Path(path))

    def leaves(node: dict[str, Any], prefix: str) -> list[str]:
        out = []
        for key, value in node.items():
            if isinstance(value, dict) and value:
                out += leaves(value, f"{prefix}{key}.")
            else:
                dumped = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9)
                out.append(f"{prefix}{key}={dumped.strip().removesuffix('...').strip()}")
        return out

    return leaves(data, "")


def dump_config(cfg: EncoderDecoderConfig | CausalLMConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
