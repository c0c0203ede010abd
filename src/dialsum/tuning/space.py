"""A sweep's search space: a YAML file of config keys (the dotted keys of `dialsum train --set`) with ranges or choices.

```yaml
objective: dev_score            # what the study optimises: dev_score (higher) or dev_loss (lower)
params:
  training.learning_rate: {low: 5.0e-5, high: 5.0e-4, log: true}
  training.epochs: {choices: [1, 2, 3]}
  lora.r: {low: 8, high: 32, step: 8}       # integers given as integers search integers
pruner: {type: median, startup_trials: 2, warmup_steps: 0}
```

Every key is checked against the model's config, and every bound and choice is validated as a value of that key
(`--set KEY=VALUE` with it must load), so a typo or an impossible range is one error line naming the file and the
key before anything starts. Values a range produces in between are validated per trial (`check_trial`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from dialsum.config import Strict, load_model_config
from dialsum.errors import ConfigError

OBJECTIVES = {"dev_score": "maximize", "dev_loss": "minimize"}


class ParamSpec(Strict):
    """One searched key: a float or integer range, or a list of choices."""

    type: Literal["float", "int", "choice"] = Field(
        description="float or int range, or choice; inferred: choices -> choice, integer bounds -> int, else float."
    )
    low: float | None = Field(None, description="Lowest value of a range (inclusive).")
    high: float | None = Field(None, description="Highest value of a range (inclusive).")
    log: bool = Field(False, description="Sample a range on a log scale (low must be > 0).")
    step: float | None = Field(None, gt=0, description="Grid step of a range (none: continuous floats, 1 for ints).")
    choices: list[Any] | None = Field(None, min_length=1, description="The values to choose from.")

    @model_validator(mode="before")
    @classmethod
    def _infer_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data:
            bounds = [data.get("low"), data.get("high")]
            kind = "choice" if "choices" in data else "int" if all(type(b) is int for b in bounds) else "float"
            data = {**data, "type": kind}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "choice":
            if not self.choices or self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("choices take no low, high, log or step")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError("choices repeat a value")
            return self
        if self.low is None or self.high is None or self.choices is not None:
            raise ValueError("a range needs low and high (and no choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and (self.low <= 0 or self.step):
            raise ValueError("log ranges need low > 0 and no step")
        if self.type == "int" and (
            self.low != int(self.low) or self.high != int(self.high) or (self.step and self.step != int(self.step))
        ):
            raise ValueError("an int range needs integer low, high and step")
        return self

    def edge_values(self) -> list[Any]:
        """The values that bound this parameter: its choices, or low and high."""
        if self.type == "choice":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def suggest(self, trial: Any, key: str) -> Any:
        """Draw this parameter from an Optuna trial (or return the value fixed for it)."""
        if self.type == "choice":
            return trial.suggest_categorical(key, self.choices)
        if self.type == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)


class PrunerSpec(Strict):
    """When a trial's evaluation curve is bad enough to stop it early."""

    type: Literal["median", "hyperband", "none"] = Field(
        "median",
        description="median: stop a trial whose best value so far is worse than the median of earlier "
        "trials at the same progress (share of the planned training, every 5%); hyperband: successive halving "
        "brackets; none: never stop early.",
    )
    startup_trials: int = Field(2, ge=0, description="Trials that finish before any is pruned (median).")
    warmup_steps: int = Field(
        0,
        ge=0,
        description="Progress of a trial, in percent of its planned training, before it can be pruned "
        "(raw optimizer steps for curves without progress).",
    )


class SearchSpace(Strict):
    """A sweep's search space and objective."""

    objective: Literal["dev_score", "dev_loss"] = Field(
        "dev_score",
        description="dev_score: the full dev score of the finished run (maximised); dev_loss: the "
        "lowest dev loss of its curve (minimised). Pruning watches the same metric on the evaluation curve.",
    )
    params: dict[str, ParamSpec] = Field(min_length=1, description="Searched config keys (dotted, as --set).")
    pruner: PrunerSpec = Field(default_factory=PrunerSpec, description="Early stopping of bad trials.")

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {key: spec.suggest(trial, key) for key, spec in self.params.items()}

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def format_value(value: Any) -> str:
    """A value as `--set` reads it back (YAML, one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9)
    return text.strip().removesuffix("...").strip()


def to_overrides(params: Mapping[str, Any]) -> list[str]:
    """Trial parameters as `KEY=VALUE` overrides, in key order."""
    return [f"{key}={format_value(value)}" for key, value in sorted(params.items())]


def to_overlay(overrides: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` overrides as a nested mapping: the YAML overlay `dialsum train --overlay` reads back."""
    from dialsum.config import parse_override

    overlay: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = overlay
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return overlay


def _one_line(where: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc or '<root>'}: {err['msg'].removeprefix('Value error, ')}")
    return f"{where}: " + "; ".join(parts)


def read_space(source: str | Path | Mapping[str, Any]) -> tuple[SearchSpace, str]:
    """Parse a space from a YAML file or a mapping (a flow parameter); returns it and where it came from."""
    if isinstance(source, Mapping):
        data, where = dict(source), "search space"
    else:
        where = str(source)
        try:
            data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{where}: search space file not found") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{where}: cannot read YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: top level must be a mapping")
    try:
        return SearchSpace.model_validate(data), where
    except ValidationError as exc:
        raise ConfigError(_one_line(where, exc)) from None


def check_value(model: str, base: Sequence[str], key: str, value: Any) -> str | None:
    """Why `key=value` cannot configure `model` (after the `base` overrides), or None when it can."""
    text = f"{key}={format_value(value)}"
    try:
        load_model_config(model, [*base, text])
    except ConfigError as exc:
        message = str(exc)
        return message.split(f"--set {text}: ", 1)[-1] if f"--set {text}: " in message else message
    return None


def load_space(
    source: str | Path | Mapping[str, Any], model: str, base: Sequence[str] = (), prefix: str | None = None
) -> SearchSpace:
    """Read a space and check every key and bound against `model`'s config (with the `base` overrides); a
    `prefix` (e.g. "generation.") limits the keys to one section."""
    space, where = read_space(source)
    load_model_config(model, base)  # the model itself (and the base overrides) must load first
    for key, spec in space.params.items():
        if prefix and not key.startswith(prefix):
            raise ConfigError(f"{where}: params.{key}: only {prefix}* keys can be searched here")
        for value in spec.edge_values():
            if (problem := check_value(model, base, key, value)) is not None:
                raise ConfigError(f"{where}: params.{key}: {problem}")
    return space


def check_trial(model: str, base: Sequence[str], params: Mapping[str, Any]) -> str | None:
    """Why a trial's parameters cannot configure `model` (naming the key), or None when they load."""
    overrides = to_overrides(params)
    try:
        load_model_config(model, [*base, *overrides])
    except ConfigError as exc:
        return str(exc)
    return None
