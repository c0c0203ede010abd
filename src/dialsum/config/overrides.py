"""Command-line overrides (`--set KEY=VALUE`): dotted keys checked against a family's schema, values read as YAML
and then validated with the rest of the profile.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel

from dialsum.config.schema import FAMILIES
from dialsum.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.learning_rate=1e-4` -> (['training', 'learning_rate'], 1e-4). The value is read as YAML (numbers,
    true/false, null, [lists], {maps}); pydantic then checks it like a value in the file."""
    key, sep, value = str(text).partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"--set {text}: expected KEY=VALUE with a dotted key, e.g. training.learning_rate=1e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text}: cannot read the value as YAML ({getattr(exc, 'problem', exc)})") from None
    return path, parsed


def _check_key(text: str, path: list[str], family: str) -> None:
    """Refuse a key the family's config does not have, naming the closest dotted key."""
    if path == ["type"]:
        raise ConfigError(f"--set {text}: the family (`type`) is fixed by the profile; pick another --models profile")
    model: Any = FAMILIES[family]
    for depth, part in enumerate(path):
        fields = getattr(model, "model_fields", None)
        if fields is None:  # inside a free-form mapping such as chat_template_kwargs
            return
        if part not in fields:
            prefix = ".".join(path[:depth])
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
            if not close:  # a nested key given without its section: `lerning_rate` -> `training.learning_rate`
                nested = {key.rsplit(".", 1)[-1]: key for key in _dotted_keys(model) if "." in key}
                close = [nested[m] for m in difflib.get_close_matches(part, list(nested), n=1, cutoff=0.6)]
            hint = f"; did you mean `{prefix + '.' if prefix else ''}{close[0]}`?" if close else ""
            raise ConfigError(f"--set {text}: unknown key `{'.'.join(path[: depth + 1])}`{hint}")
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None and depth < len(path) - 1 and dict not in {getattr(c, "__origin__", c) for c in candidates}:
            raise ConfigError(f"--set {text}: `{'.'.join(path[: depth + 1])}` is a value, not a section")


def _dotted_keys(model: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a config model, dotted (`training.learning_rate`)."""
    keys = []
    for name, info in model.model_fields.items():
        candidates = [info.annotation, *getattr(info.annotation, "__args__", ())]
        section = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        keys += _dotted_keys(section, f"{prefix}{name}.") if section else [f"{prefix}{name}"]
    return keys


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], family: str) -> dict[str, str]:
    """Set each `KEY=VALUE` of `overrides` into `raw` (in order; a later one wins), after checking the key against
    the family's schema. Returns {dotted key: the override as given}, to name it in validation errors."""
    given = {}
    for text in overrides:
        path, value = parse_override(text)
        _check_key(text, path, family)
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
        given[".".join(path)] = text
    return given
