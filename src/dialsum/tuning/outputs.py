"""What a finished sweep leaves in `sweeps/<study>/`: `trials.csv`, `best.yaml` (an overlay for `dialsum train
--overlay`), `history.png` (optimisation history) and `importance.png` (parameter importance), plus the rows of
the Prefect table artifact and the plain-text table the CLI prints."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import yaml

from dialsum.tuning.space import SearchSpace, to_overlay, to_overrides

log = logging.getLogger(__name__)

STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
COLUMNS = ["trial", "state", "value", "dev_score", "held_out_score", "split_seed", "held_out_fraction",
           "held_out_sha256", "progress", "partial", "partial_value", "steps", "seconds", "run_id", "slot",
           "requeued_from", "error"]


def trial_rows(study: Any, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per trial, in trial order: state, value, parameters and bookkeeping."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row = {"trial": t.number, "state": STATES.get(t.state.name, t.state.name.lower()),
               "value": round(t.value, 4) if t.value is not None and t.state.name == "COMPLETE" else None,
               "dev_score": _round(attrs.get("dev_score")), "held_out_score": _round(attrs.get("held_out_score")),
               **_split_columns(attrs.get("split")), "steps": attrs.get("train_steps"),
               "seconds": _round(attrs.get("seconds"), 1), "run_id": attrs.get("run_id"), "slot": attrs.get("slot"),
               "requeued_from": attrs.get("requeued_from"), "error": attrs.get("error")}
        row.update(_partial(t))
        row.update({key: t.params.get(key) for key in space.params})
        row["flow_run_id"] = (attrs.get("handle") or "").split("@")[0] or None
        rows.append(row)
    return rows


def _partial(t: Any) -> dict[str, Any]:
    """For plots: the share of its planned training a trial reached (1.0 once completed) and, for a trial that did
    not complete, its last value on the pruner's curve, flagged partial (never comparable with a final value)."""
    done = t.state.name == "COMPLETE"
    last = max(t.intermediate_values) if t.intermediate_values else None
    return {"progress": 1.0 if done else _round(t.user_attrs.get("progress")), "partial": not done,
            "partial_value": None if done or last is None else _round(t.intermediate_values[last])}


def _split_columns(split: dict[str, Any] | None) -> dict[str, Any]:
    """The dev split a trial's held-out score was measured on (value: the selection part; held_out_score: the
    held-out part, never read by the sweep)."""
    split = split or {}
    return {"split_seed": split.get("seed"), "held_out_fraction": split.get("held_out_fraction"),
            "held_out_sha256": split.get("held_out_sha256")}


def _round(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def trials_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    columns = list(rows[0]) if rows else COLUMNS
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def best_trial(study: Any) -> Any | None:
    """The best completed trial, or None when none completed."""
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    if not completed:
        return None
    return study.best_trial


def best_overlay(study: Any, model: str, base: Sequence[str]) -> str | None:
    """best.yaml: the sweep's base overrides and the best trial's parameters, as an overlay YAML."""
    best = best_trial(study)
    if best is None:
        return None
    overlay = to_overlay([*base, *to_overrides(best.params)])
    header = (f"# Best trial {best.number} of study {study.study_name} ({model}): value {best.value:.4f}.\n"
              f"# Reproduce it: dialsum train --models {model} --overlay best.yaml\n")
    return header + yaml.safe_dump(overlay, sort_keys=True, allow_unicode=True)


def format_table(rows: list[dict[str, Any]], params: Sequence[str]) -> str:
    """The plain-text trial table: number, state, value, parameters, and why a trial failed."""
    cols = ["trial", "state", "value", "dev_score", "steps", *params, "error"]
    cols = [c for c in cols if c in ("trial", "state") or any(r.get(c) is not None for r in rows)]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)


def plot_history(study: Any, path: Path) -> None:
    """history.png: each trial's value by trial number (pruned and failed marked) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = study.get_trials(deepcopy=False)
    maximize = study.direction.name == "MAXIMIZE"
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [(t.number, t.value) for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    pruned = [(t.number, t.value) for t in trials if t.state.name == "PRUNED" and t.value is not None]
    if done:
        ax.scatter(*zip(*done), label="completed", color="tab:blue")
        best, line = None, []
        for number, value in sorted(done):
            best = value if best is None else (max(best, value) if maximize else min(best, value))
            line.append((number, best))
        ax.step(*zip(*line), where="post", label="best so far", color="tab:red")
    if pruned:
        ax.scatter(*zip(*pruned), label="pruned (last reported)", color="tab:gray", marker="x")
    for t in trials:
        if t.state.name == "FAIL":
            ax.axvline(t.number, color="tab:orange", alpha=0.3, linewidth=1)
    ax.set_xlabel("trial")
    ax.set_ylabel("value")
    ax.set_title(f"{study.study_name}: optimisation history (failed trials shaded)")
    if done or pruned:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_importance(study: Any, path: Path) -> dict[str, float]:
    """importance.png: parameter importance over the completed trials (Optuna's default PED-ANOVA; needs two of them)."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "too few trials": the plot says so
            importance = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:  # too few completed trials, or a parameter that never varied
        log.info("parameter importance not computed: %s", exc)
        importance = {}
    fig, ax = plt.subplots(figsize=(7, 0.6 * max(len(importance), 2) + 1.2))
    if importance:
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (PED-ANOVA, Optuna's default)")
    else:
        ax.text(0.5, 0.5, "needs at least two completed trials", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"{study.study_name}: parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {k: round(float(v), 4) for k, v in importance.items()}


def write_outputs(folder: Path, study: Any, space: SearchSpace, model: str, base: Sequence[str]) -> dict[str, Any]:
    """Write trials.csv, best.yaml (when a trial completed) and the two plots into `folder`; returns the facts."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, space)
    (folder / "trials.csv").write_text(trials_csv(rows), encoding="utf-8")
    overlay = best_overlay(study, model, base)
    if overlay is not None:
        (folder / "best.yaml").write_text(overlay, encoding="utf-8")
    plot_history(study, folder / "history.png")
    importance = plot_importance(study, folder / "importance.png")
    best = best_trial(study)
    return {"rows": rows, "importance": importance,
            "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params}}
