"""What a finished sweep leaves in `sweeps/<study>/`: `trials.csv`, `best.yaml` (an overlay for `dialsum train
--overlay`), `history.png` (optimisation history) and `importance.png` (parameter importance), plus the rows of
the Prefect table artifact and the plain-text table the CLI prints."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dialsum.tuning.space import SearchSpace, to_overlay, to_overrides

log = logging.getLogger(__name__)

STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
COLUMNS = [
    "trial",
    "state",
    "value",
    "dev_score",
    "held_out_score",
    "split_seed",
    "held_out_fraction",
    "held_out_sha256",
    "progress",
    "partial",
    "partial_value",
    "steps",
    "seconds",
    "run_id",
    "slot",
    "requeued_from",
    "error",
]


def trial_rows(study: Any, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per trial, in trial order: state, value, parameters and bookkeeping."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row = {
            "trial": t.number,
            "state": STATES.get(t.state.name, t.state.name.lower()),
            "value": round(t.value, 4) if t.value is not None and t.state.name == "COMPLETE" else None,
            "dev_score": _round(attrs.get("dev_score")),
            "held_out_score": _round(attrs.get("held_out_score")),
            **_split_columns(attrs.get("split")),
            "steps": attrs.get("train_steps"),
            "seconds": _round(attrs.get("seconds"), 1),
            "run_id": attrs.get("run_id"),
            "slot": attrs.get("slot"),
            "requeued_from": attrs.get("requeued_from"),
            "error": attrs.get("error"),
        }
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
    return {
        "progress": 1.0 if done else _round(t.user_attrs.get("progress")),
        "partial": not done,
        "partial_value": None if done or last is None else _round(t.intermediate_values[last]),
    }


def _split_columns(split: dict[str, Any] | None) -> dict[str, Any]:
    """The dev split a trial's held-out score was measured on (value: the selection part; held_out_score: the
    held-out part, never read by the sweep)."""
    split = split or {}
    return {
        "split_seed": split.get("seed"),
        "held_out_fraction": split.get("held_out_fraction"),
        "held_out_sha256": split.get("held_out_sha256"),
    }


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


def best_overlay(study: Any, model: str, base: Sequence[str], debug: bool = False) -> str | None:
    """best.yaml: the sweep's base overrides and the best trial's parameters, as an overlay YAML; its reproduce
    line repeats the sweep's `--debug`."""
    best = best_trial(study)
    if best is None:
        return None
    overlay = to_overlay([*base, *to_overrides(best.params)])
    header = (
        f"# Best trial {best.number} of study {study.study_name} ({model}): value {best.value:.4f}.\n"
        f"# Reproduce it: dialsum train --models {model} --overlay best.yaml{' --debug' if debug else ''}\n"
    )
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


def _pruned_where(trial: Any) -> str:
    """Where a pruned trial stopped: its share of planned training when recorded, else its last evaluated step."""
    progress = trial.user_attrs.get("progress")
    if isinstance(progress, (int, float)):
        return f"{100 * progress:.0f}%"
    return f"step {max(trial.intermediate_values)}" if trial.intermediate_values else ""


def history_figure(study: Any, objective: str = "value"):
    """Completed trials' final values (filled) and pruned trials' partial values (hollow, labelled with where they
    stopped), the best so far over completed trials only, failed trials as shaded lines; integer trial ticks and
    a legend entry only for what is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trials = study.get_trials(deepcopy=False)
    maximize = study.direction.name == "MAXIMIZE"
    fig, ax = plt.subplots(figsize=(9, 4.2))
    done = [(t.number, t.value) for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.value is not None]
    failed = [t.number for t in trials if t.state.name == "FAIL"]
    if done:
        ax.scatter(*zip(*done), label="completed (final value)", color="tab:blue", zorder=3)
        best, line = None, []
        for number, value in sorted(done):
            best = value if best is None else (max(best, value) if maximize else min(best, value))
            line.append((number, best))
        line.append((max(t.number for t in trials), line[-1][1]))
        ax.step(*zip(*line), where="post", label="best so far (completed only)", color="tab:red")
    if pruned:
        ax.scatter(
            [t.number for t in pruned],
            [t.value for t in pruned],
            facecolors="none",
            edgecolors="tab:gray",
            marker="o",
            label="pruned (partial value, not final)",
            zorder=3,
        )
        for t in pruned:
            ax.annotate(
                _pruned_where(t),
                (t.number, t.value),
                xytext=(4, -10),
                textcoords="offset points",
                fontsize=7,
                color="tab:gray",
            )
    for number in failed:
        ax.axvline(
            number,
            color="tab:orange",
            alpha=0.35,
            linewidth=6,
            label="failed (no value)" if number == failed[0] else None,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if trials:
        ax.set_xlim(-0.5, max(t.number for t in trials) + 0.5)
    ax.set_xlabel("trial")
    better = "higher" if maximize else "lower"
    ax.set_ylabel(f"{objective} ({better} is better)")
    ax.set_title(f"{study.study_name}: {objective} per trial")
    if done or pruned or failed:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if pruned:
        fig.text(
            0.01,
            0.01,
            "Pruned trials stopped early: their values are partial (at their last evaluation), "
            "not comparable with completed ones.",
            fontsize=7,
            color="dimgray",
        )
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.04 if pruned else 0, 1, 1))
    return fig


def plot_history(study: Any, path: Path, objective: str = "value") -> None:
    """history.png: see `history_figure`."""
    import matplotlib.pyplot as plt

    fig = history_figure(study, objective)
    fig.savefig(path, dpi=100)
    plt.close(fig)


MIN_IMPORTANCE_TRIALS = 5


def plot_importance(study: Any, path: Path) -> dict[str, float]:
    """importance.png: parameter importance over the completed trials (Optuna's default PED-ANOVA; needs two of
    them)."""
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
    fig = importance_figure(study, importance)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {k: round(float(v), 4) for k, v in importance.items()}


def importance_figure(study: Any, importance: dict[str, float]):
    """The importance bars, with a warning under them when fewer than `MIN_IMPORTANCE_TRIALS` trials completed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    completed = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE")
    fig, ax = plt.subplots(figsize=(7, 0.6 * max(len(importance), 2) + 1.6))
    if importance:
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (PED-ANOVA, Optuna's default)")
    else:
        ax.text(0.5, 0.5, "needs at least two completed trials", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"{study.study_name}: parameter importance ({completed} completed trials)")
    few = bool(importance) and completed < MIN_IMPORTANCE_TRIALS
    if few:
        fig.text(
            0.01,
            0.01,
            f"Only {completed} completed trials (fewer than {MIN_IMPORTANCE_TRIALS}): these "
            "importances are not reliable.",
            fontsize=8,
            color="tab:red",
        )
    fig.tight_layout(rect=(0, 0.06 if few else 0, 1, 1))
    return fig


def write_outputs(
    folder: Path, study: Any, space: SearchSpace, model: str, base: Sequence[str], debug: bool = False
) -> dict[str, Any]:
    """Write trials.csv, best.yaml (when a trial completed) and the two plots into `folder`; returns the facts."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, space)
    (folder / "trials.csv").write_text(trials_csv(rows), encoding="utf-8")
    overlay = best_overlay(study, model, base, debug)
    if overlay is not None:
        (folder / "best.yaml").write_text(overlay, encoding="utf-8")
    plot_history(study, folder / "history.png", space.objective)
    importance = plot_importance(study, folder / "importance.png")
    best = best_trial(study)
    return {
        "rows": rows,
        "importance": importance,
        "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params},
    }
