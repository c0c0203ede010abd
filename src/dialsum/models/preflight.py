"""Checks before training that need only the tokenizer: lengths, cuts, reachable references, round trips.

For each model and split: rows; token-length percentiles of dialogue, prompt and summary; rows whose input or
target will be cut; the share of dev references the generation settings can produce (within `max_new_tokens`,
not blocked by the no-repeat rule exactly as generation applies it); and how many summaries survive
encode → decode. A setting that makes references unreachable is an error unless forced.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dialsum.config import load_model_config
from dialsum.data import SPLITS, Example, load_splits, placeholders_in, sample_dir
from dialsum.errors import ConfigError, DataError, PreflightError
from dialsum.models import checkpoint_source, decoding, family

log = logging.getLogger(__name__)


@dataclass
class SplitStats:
    split: str
    rows: int
    dialogue: list[int]
    prompt: list[int]
    summary: list[int] | None
    inputs_cut: int
    targets_cut: int | None
    round_trip: int | None


@dataclass
class Report:
    """One model's preflight: the settings checked, each split's statistics and the dev references' reachability."""

    model: str
    type: str  # the model family
    tokenizer: str
    input_setting: str  # the config key that limits the input...
    input_limit: int  # ...and its value
    max_target_length: int
    max_new_tokens: int  # generation.max_new_tokens
    no_repeat: int  # generation.no_repeat_ngram_size
    splits: list[SplitStats] = field(default_factory=list)
    # Dev references: how many, how many need more than max_new_tokens (and the longest, in tokens), how many the
    # no-repeat rule blocks, and how many cannot be generated for either reason.
    references: int = 0
    too_long: int = 0
    longest: int = 0
    blocked: int = 0
    unreachable: int = 0

    @property
    def reachable(self) -> int:
        return self.references - self.unreachable

    def problems(self) -> list[str]:
        """One line per setting that makes dev references unreachable."""
        out = []
        if self.too_long:
            out.append(
                f"{self.model}: generation.max_new_tokens={self.max_new_tokens} is shorter than {self.too_long} "
                f"of {self.references} dev references (longest {self.longest} tokens)"
            )
        if self.blocked:
            out.append(
                f"{self.model}: generation.no_repeat_ngram_size={self.no_repeat} blocks {self.blocked} "
                f"of {self.references} dev references"
            )
        return out


def percentiles(values: Sequence[int]) -> str:
    """p50/p90/p99/max of token lengths (nearest rank)."""
    if not values:
        return "-"
    ordered = sorted(values)
    pick = [ordered[min(len(ordered) - 1, max(0, -(-q * len(ordered) // 100) - 1))] for q in (50, 90, 99)]
    return "/".join(str(v) for v in pick + [ordered[-1]])


def split_stats(cfg, fam, tok, split: str, examples: list[Example]) -> SplitStats:
    dialogue = [len(ids) for ids in tok([ex.dialogue for ex in examples], add_special_tokens=False)["input_ids"]]
    overhead = fam.input_overhead(cfg, tok)
    prompt = [n + overhead for n in dialogue]
    _, limit = fam.input_limit(cfg)
    stats = SplitStats(split, len(examples), dialogue, prompt, None, sum(n > limit for n in prompt), None, None)
    with_summary = [ex for ex in examples if ex.summary]
    if with_summary:
        targets = fam.target_ids(cfg, tok, [ex.summary for ex in with_summary])
        stats.summary = [len(t) for t in targets]
        stats.targets_cut = sum(n > cfg.max_target_length for n in stats.summary)
        texts = decoding.decode(tok, [t[:-1] for t in targets])
        stats.round_trip = sum(text == ex.summary for text, ex in zip(texts, with_summary))
    return stats


def reachability(report: Report, cfg, fam, tok, dev: list[Example]) -> None:
    """Count dev references generation cannot produce, by the same rule the logits processor applies."""
    g = cfg.generation
    exempt = fam.no_repeat_exempt_ids(cfg, tok) if g.no_repeat_ngram_size else []
    targets = fam.target_ids(cfg, tok, [ex.summary for ex in dev])
    report.references = len(targets)
    report.longest = max(len(t) for t in targets)
    for ids in targets:
        long = len(ids) > g.max_new_tokens
        blocked = decoding.blocked_at(ids, g.no_repeat_ngram_size, exempt) is not None
        report.too_long += long
        report.blocked += blocked
        report.unreachable += long or blocked


def check(cfg, tok, splits: dict[str, list[Example]], tokenizer_name: str) -> Report:
    fam = family(cfg)
    setting, limit = fam.input_limit(cfg)
    g = cfg.generation
    report = Report(
        cfg.name,
        cfg.type,
        tokenizer_name,
        setting,
        limit,
        cfg.max_target_length,
        g.max_new_tokens,
        g.no_repeat_ngram_size,
    )
    for split in SPLITS:
        if split in splits:
            report.splits.append(split_stats(cfg, fam, tok, split, splits[split]))
    if splits.get("dev"):
        reachability(report, cfg, fam, tok, splits["dev"])
    return report


def format_report(r: Report) -> str:
    head = (
        f"{r.model} ({r.type}; tokenizer {r.tokenizer}; {r.input_setting}={r.input_limit}, "
        f"max_target_length={r.max_target_length}, max_new_tokens={r.max_new_tokens}, "
        f"no_repeat_ngram_size={r.no_repeat})"
    )
    rows = [
        [
            "split",
            "rows",
            "dialogue p50/p90/p99/max",
            "prompt p50/p90/p99/max",
            "summary p50/p90/p99/max",
            "inputs cut",
            "targets cut",
            "round trip",
        ]
    ]
    for s in r.splits:
        rt = f"{s.round_trip}/{len(s.summary)}" if s.summary is not None else "-"
        rows.append(
            [
                s.split,
                str(s.rows),
                percentiles(s.dialogue),
                percentiles(s.prompt),
                percentiles(s.summary or []),
                str(s.inputs_cut),
                "-" if s.targets_cut is None else str(s.targets_cut),
                rt,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head] + ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    if r.references:
        lines.append(
            f"  dev references reachable: {r.reachable}/{r.references} ({100 * r.reachable / r.references:.1f}%)"
            f"; longer than max_new_tokens: {r.too_long} (longest {r.longest}); "
            f"blocked by no-repeat: {r.blocked}"
        )
    else:
        lines.append("  dev references reachable: - (no dev split)")
    return "\n".join(lines)


LOCAL_COPY_HINT = "point `tokenizer` (or `model`) of a profile YAML at a local folder and pass that YAML to --models"


class PreflightFailed(ConfigError):
    """A model whose tokenizer could not be checked; `reports` holds the other models' reports."""

    def __init__(self, message: str, reports: list[Report]) -> None:
        super().__init__(message)
        self.reports = reports


def load_checked_tokenizer(cfg, source: str, placeholders: list[str], hint: str = LOCAL_COPY_HINT):
    try:
        tok, _ = family(cfg).load_tokenizer(cfg, source, placeholders)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{cfg.name}: cannot load the tokenizer from {cfg.tokenizer or source} ({first}); {hint}"
        ) from None
    return tok


def gate(cfg, splits: dict[str, list[Example]], source: str, force: bool = False) -> Report:
    """Run the checks for one model before it is built: log the report, refuse unreachable references."""
    placeholders = placeholders_in(splits.get("train", []) + splits.get("dev", []))
    tok = load_checked_tokenizer(cfg, source, placeholders)
    report = check(cfg, tok, splits, cfg.tokenizer or cfg.model)
    log.debug("preflight\n%s", format_report(report))
    problems = report.problems()
    log.info(
        "%s: preflight: %d/%d dev references reachable under the generation settings (-v for the report)",
        cfg.name,
        report.reachable,
        report.references,
    )
    if problems and not force:
        raise PreflightError("; ".join(problems) + " (use --force to go on)")
    for line in problems:
        log.warning("%s (going on: --force)", line)
    return report


def tokenizer_overrides(values: Sequence[str], models: Sequence[str]) -> dict[str, str]:
    """`--tokenizer PATH` (one model) or `--tokenizer MODEL=PATH ...` into {model: path}."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            if len(models) != 1:
                raise ConfigError(f"--tokenizer {value}: with several models write MODEL=PATH")
            name, path = models[0], value
        if name not in models:
            raise ConfigError(f"--tokenizer {value}: {name} is not among --models")
        if not Path(path).is_dir():
            raise ConfigError(f"--tokenizer {value}: {path} is not a folder")
        out[name] = path
    return out


def run(
    models: Sequence[str], data_dir: Path | None = None, tokenizers: Sequence[str] = (), overrides: Sequence[str] = ()
) -> tuple[list[Report], list[str]]:
    """Check each model against the data; returns the reports and every problem line."""
    splits = load_splits(data_dir, optional=SPLITS)
    if not splits:
        raise DataError(f"{data_dir or sample_dir()}: no train.csv, dev.csv or test.csv")
    local_tokenizers = tokenizer_overrides(tokenizers, models)
    placeholders = placeholders_in(splits.get("train", []) + splits.get("dev", []))
    reports, failures = [], []
    for name in models:
        cfg = load_model_config(name, overrides)
        if name in local_tokenizers:
            cfg = cfg.model_copy(update={"tokenizer": local_tokenizers[name]})
        source = checkpoint_source(cfg)
        try:
            tok = load_checked_tokenizer(cfg, source, placeholders, "pass --tokenizer MODEL=PATH to use a local copy")
        except ConfigError as exc:
            failures.append(str(exc))
            continue
        reports.append(check(cfg, tok, splits, cfg.tokenizer or cfg.model))
    if failures:
        raise PreflightFailed("; ".join(failures), reports)
    return reports, [p for r in reports for p in r.problems()]
