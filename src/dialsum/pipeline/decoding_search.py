"""The decoding search behind `dialsum tune-decoding`: a cheap Optuna study over generation settings of a saved model,
no retraining, no Prefect.

The model is loaded once (`pipeline.serve.open_run`). The dev set is split by the run's own dev split
(`data.holdout`, recorded in its metrics.json; never the sampler's seed): every trial is scored on the selection
part; the best setting and the run's own setting are then scored once on the held-out part, with the paired interval
of their difference (`release.stats.paired_bootstrap`), so the reported gain is not the search's own optimism. The
run's own setting is scored beside the trials and kept when no trial beats it on the search part. Outputs in
`out_dir` (default `<run>/decoding/`): `decoding.yaml` (the best setting as an overlay for `--overlay`),
`trials.csv` and `decoding.json`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dialsum import metric
from dialsum.config import load_model_config
from dialsum.data import holdout
from dialsum.release.stats import bootstrap_interval, paired_bootstrap
from dialsum.tuning import outputs
from dialsum.tuning.space import SearchSpace, load_space, to_overlay, to_overrides

log = logging.getLogger(__name__)


def default_space(cfg: Any) -> dict[str, Any]:
    """Beams, length penalty, the no-repeat guard and the summary length, around the run's own settings."""
    g = cfg.generation
    lengths = sorted({max(8, g.max_new_tokens // 2), max(8, (g.max_new_tokens * 3) // 4), g.max_new_tokens})
    return {
        "objective": "dev_score",
        "pruner": {"type": "none"},
        "params": {
            "generation.num_beams": {"choices": sorted({1, 2, 4, g.num_beams})},
            "generation.length_penalty": {"low": 0.6, "high": 1.6},
            "generation.no_repeat_ngram_size": {"choices": sorted({0, 4, 8, 12, g.no_repeat_ngram_size})},
            "generation.max_new_tokens": {"choices": lengths},
        },
    }


def current_params(cfg: Any, space: SearchSpace) -> dict[str, Any]:
    """The run's own value of every searched key."""
    values = {}
    for key in space.params:
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        values[key] = node
    return values


class Scorer:
    """Generates and scores dev rows with a variant of the run's generation settings."""

    def __init__(self, ctx: Any, config_path: str) -> None:
        self.ctx, self.config_path = ctx, config_path
        self.model = ctx.family.inference_model(ctx.cfg, ctx.model)
        self.examples = {ex.fname: ex for ex in ctx.splits["dev"]}

    def predict(self, params: Mapping[str, Any], fnames: list[str]) -> list[str]:
        cfg = load_model_config(self.config_path, to_overrides(params))
        rows = [self.examples[f] for f in fnames]
        features = self.ctx.family.build_features(cfg, self.ctx.tok, rows, with_labels=False)
        return self.ctx.family.generate(cfg, self.model, self.ctx.tok, features)

    def references(self, fnames: list[str]) -> list[str]:
        return [self.examples[f].summary for f in fnames]


def run_split(run_dir: Path) -> holdout.DevSplit:
    """The dev split the run recorded in its metrics.json (its best step was chosen on that selection part), else
    the configured one; never the sampler's seed."""
    path = run_dir / "metrics.json"
    recorded = None
    if path.is_file():
        recorded = holdout.DevSplit.from_record(
            (json.loads(path.read_text(encoding="utf-8")).get("dev_held_out") or {}).get("split")
        )
    return recorded or holdout.dev_split()


def _study(space: SearchSpace, seed: int) -> Any:
    import optuna
    from optuna.samplers import TPESampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=TPESampler(seed=seed))


def tune_decoding(
    run_dir: Path,
    data_dir: Path | None = None,
    space: Path | Mapping[str, Any] | None = None,
    trials: int = 16,
    rows: int | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Search generation settings of the saved run at `run_dir` on dev; returns the summary written to decoding.json."""
    from dialsum.pipeline.serve import open_run  # loads torch

    config_path = str(Path(run_dir) / "config.yaml")
    cfg = load_model_config(config_path)
    searched = load_space(space if space is not None else default_space(cfg), config_path, prefix="generation.")
    ctx = open_run(Path(run_dir), data_dir, splits=("dev",))
    scorer = Scorer(ctx, config_path)
    split = run_split(Path(run_dir))
    search, held = split.parts(list(scorer.examples))
    search = search[:rows] if rows else search
    if not search or not held:
        raise ValueError(f"dev has too few rows ({len(scorer.examples)}) for a search part and a held-out part")
    study = _study(searched, seed)
    own = current_params(cfg, searched)
    with holdout.choosing("decoding search"):
        holdout.read(search)
        own_search = metric.score(scorer.predict(own, search), scorer.references(search))["score"]
        for _ in range(trials):
            trial = study.ask()
            params = rounded(searched.suggest(trial))
            value = metric.score(scorer.predict(params, search), scorer.references(search))["score"]
            study.tell(trial, value)
            log.info("decoding trial %d: %.2f (%s)", trial.number, value, ", ".join(to_overrides(params)))
    best = study.best_trial
    best_params = rounded(best.params) if best.value > own_search else dict(own)  # the run's own setting may win
    held_refs = scorer.references(held)
    own_preds = scorer.predict(own, held)
    best_preds = own_preds if best_params == own else scorer.predict(best_params, held)
    best_rows, own_rows = metric.row_scores(best_preds, held_refs), metric.row_scores(own_preds, held_refs)
    gain = paired_bootstrap(best_rows, own_rows, seed=seed)
    interval = bootstrap_interval(best_rows, seed=seed)
    summary = {
        "run": str(run_dir),
        "trials": len(study.trials),
        "search_rows": len(search),
        "heldout_rows": len(held),
        "split": split.record(list(scorer.examples)),
        "sampler_seed": seed,
        "best": {
            "trial": best.number if best_params != own else None,
            "params": best_params,
            "search_score": round(max(best.value, own_search), 4),
            "heldout_score": round(metric.score(best_preds, held_refs)["score"], 4),
            "heldout_interval": [round(interval.low, 4), round(interval.high, 4)],
        },
        "own": {
            "params": own,
            "search_score": round(own_search, 4),
            "heldout_score": round(metric.score(own_preds, held_refs)["score"], 4),
        },
        "gain": {
            "mean": round(gain.mean, 4),
            "interval": [round(gain.low, 4), round(gain.high, 4)],
            "interval_kind": "95% paired bootstrap over rows",
        },
    }
    summary["recommended"] = recommendation(best_params != own, gain.low)
    _write(Path(out_dir) if out_dir else Path(run_dir) / "decoding", study, searched, summary)
    return summary


def rounded(params: Mapping[str, Any]) -> dict[str, Any]:
    """Searched floats to 3 significant digits (`length_penalty: 1.14`, not 1.1448831829968968), before they are
    scored, so the setting written is the setting measured."""
    return {key: float(f"{value:.3g}") if isinstance(value, float) else value for key, value in params.items()}


def recommendation(differs: bool, gain_low: float) -> dict[str, str]:
    """Which setting `decoding.yaml` recommends: the best one found only when it differs from the run's own and
    its held-out gain is above 0 beyond the noise (the 95% interval's lower bound); else the run's own."""
    if not differs:
        return {"use": "own", "why": "no setting beat the run's own on the search rows"}
    if gain_low <= 0:
        return {"use": "own", "why": "the best setting found gains nothing beyond the noise on held-out rows"}
    return {"use": "best", "why": "the best setting found gains on held-out rows beyond the noise"}


def _write(folder: Path, study: Any, space: SearchSpace, summary: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    chosen = summary["best"] if summary["recommended"]["use"] == "best" else summary["own"]
    overlay = to_overlay(to_overrides(chosen["params"]))
    which = f"trial {summary['best']['trial']}" if chosen is summary["best"] else "the run's own setting"
    header = (
        f"# Recommended decoding of {summary['run']} ({which}): {summary['recommended']['why']}. Held-out dev "
        f"score {summary['best']['heldout_score']:.2f} for the best setting found vs "
        f"{summary['own']['heldout_score']:.2f} for the run's own.\n"
    )
    (folder / "decoding.yaml").write_text(header + yaml.safe_dump(overlay, sort_keys=True), encoding="utf-8")
    (folder / "trials.csv").write_text(outputs.trials_csv(outputs.trial_rows(study, space)), encoding="utf-8")
    (folder / "decoding.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary["location"] = str(folder)


def format_summary(summary: dict[str, Any]) -> str:
    best, own, gain = summary["best"], summary["own"], summary["gain"]
    recommended = summary["recommended"]
    keep = recommended["use"] == "own"
    return "\n".join(
        [
            f"{summary['trials']} settings tried on {summary['search_rows']} dev rows (the run's own scored "
            f"{own['search_score']:.2f}); best: "
            + (f"trial {best['trial']}" if best["trial"] is not None else "the run's own")
            + f" ({', '.join(to_overrides(best['params']))})",
            f"held-out dev ({summary['heldout_rows']} rows): best {best['heldout_score']:.2f}, the run's own "
            f"{own['heldout_score']:.2f}; gain {gain['mean']:+.2f} (95% CI [{gain['interval'][0]:+.2f}, "
            f"{gain['interval'][1]:+.2f}])",
            ("recommended: keep the run's own setting: " if keep else "recommended: the best setting found: ")
            + recommended["why"],
            f"overlay: {summary['location']}/decoding.yaml" + (" (the run's own setting)" if keep else ""),
        ]
    )
