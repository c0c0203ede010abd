"""The train-all report: PNGs in the ensemble folder and a markdown summary for Prefect and W&B.

`report.png` has two panels: the training loss per optimizer step of every model (from its `metrics.json`,
`train_losses`), and each model's and the ensemble's dev score with its 95% interval next to the champion's (the
champion in service when the run started), on an axis zoomed to the scores; each model keeps one colour in
every figure of a run. Beside it, for runs with candidates, `n_scaling.png`: dev score against the
number of MBR candidates N (1, 2, 4, 8, 16), pooled and per model, with 95% intervals. The markdown compares
challenger and champion per model and for the ensemble (with its held-out score), states the promotion
decision with the challenger - champion difference and its interval, and links the PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLOT = "report.png"
SCALING_PLOT = "n_scaling.png"


ENSEMBLE_COLOR = "#222222"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """One colour per model, the same in every figure of a run (models in sorted order take the palette in turn);
    the ensemble and pooled MBR are near-black."""
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted({m for m in models if m not in _POOLED}))}
    return {**colors, **{name: ENSEMBLE_COLOR for name in _POOLED}}


_POOLED = ("ensemble", "mbr")


def intervals_of(row_scores: dict[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """The 95% bootstrap interval of each series' mean per-row score (seeded, as everywhere in release)."""
    from dialsum.release.stats import bootstrap_interval

    out = {}
    for name, rows in row_scores.items():
        if len(rows):
            interval = bootstrap_interval(list(rows))
            out[name] = (interval.low, interval.high)
    return out


def _zoomed(values: list[float]) -> tuple[float, float]:
    """Axis limits around the data (with room for labels), not 0-100, so 85.8 and 86.1 look different."""
    low, high = min(values), max(values)
    pad = max((high - low) * 0.25, 0.5)
    return max(low - pad, 0.0), min(high + pad * 1.4, 100.0)


def _score_bars(
    ax,
    scores: dict[str, float],
    champion_scores: dict[str, float],
    colors: dict[str, str],
    intervals: dict[str, tuple[float, float]],
    champion_intervals: dict[str, tuple[float, float]],
) -> None:
    """Each model's and the ensemble's dev score with its 95% interval, the champion's beside it (hatched)."""
    from matplotlib.patches import Patch

    names, width = list(scores), 0.38 if champion_scores else 0.6
    sides = [("this run", scores, intervals, {}, -width / 2 if champion_scores else 0.0)]
    if champion_scores:
        sides.append(("champion", champion_scores, champion_intervals, {"hatch": "//", "alpha": 0.45}, width / 2))
    shown = []
    for _, values, spans, style, offset in sides:
        for i, name in enumerate(names):
            if values.get(name) is None:
                continue
            value, span = values[name], spans.get(name)
            ax.bar(i + offset, value, width, color=colors.get(name, ENSEMBLE_COLOR), edgecolor="white", **style)
            if span:
                ax.errorbar(
                    i + offset,
                    value,
                    yerr=[[value - span[0]], [span[1] - value]],
                    color="black",
                    capsize=4,
                    linewidth=1,
                )
            top = span[1] if span else value
            ax.annotate(
                f"{value:.2f}",
                (i + offset, top),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
            shown += [value, *(span or ())]
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_ylim(*_zoomed(shown))
    ax.set(title="Dev score (100 x mean ROUGE-1/2/L F1), 95% CI", ylabel="dev score")
    ax.grid(axis="y", alpha=0.3)
    if champion_scores:
        ax.legend(
            handles=[
                Patch(facecolor="#888888", label="this run"),
                Patch(facecolor="#888888", alpha=0.45, hatch="//", label="champion"),
            ],
            fontsize=8,
        )


def plot(path: Path, *figure_args: Any, **figure_kwargs: Any) -> Path:
    """Write `figure(*figure_args, **figure_kwargs)` to `path` as a PNG and return it."""
    return _save(figure(*figure_args, **figure_kwargs), path)


def figure(
    losses: dict[str, list[float]],
    scores: dict[str, float],
    champion_scores: dict[str, float] | None,
    title: str,
    intervals: dict[str, tuple[float, float]] | None = None,
    champion_intervals: dict[str, tuple[float, float]] | None = None,
    colors: dict[str, str] | None = None,
):
    """The report's two-panel matplotlib figure: loss curves, and dev scores (with 95% intervals where per-row
    scores are known) on an axis zoomed to them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {**model_colors([*losses, *scores]), **(colors or {})}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for model, curve in losses.items():
        if curve:
            left.plot(range(1, len(curve) + 1), curve, label=model, linewidth=1.4, color=colors[model])
    left.set(title="Training loss", xlabel="optimizer step (bucketed beyond 500)", ylabel="loss")
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if any(losses.values()):
        left.legend(fontsize=8)
    left.grid(alpha=0.3)
    _score_bars(right, scores, champion_scores or {}, colors, intervals or {}, champion_intervals or {})
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def plot_scaling(path: Path, scaling: dict[str, Any], title: str, colors: dict[str, str] | None = None) -> Path:
    """Write `scaling_figure` to `path` and return it."""
    return _save(scaling_figure(scaling, title, colors), path)


def scaling_figure(scaling: dict[str, Any], title: str, colors: dict[str, str] | None = None):
    """Dev score against N (log2 axis) for pooled MBR and each model's own MBR, each point with its 95% interval
    as an error bar (series side by side, not overlapping bands), in the models' colours of report.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {**model_colors(list(scaling["series"])), **(colors or {})}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    count = len(scaling["series"])
    for k, (name, points) in enumerate(scaling["series"].items()):
        shift = 2 ** ((k - (count - 1) / 2) * 0.06)  # a small side step on the log2 axis
        n = [p["n"] * shift for p in points]
        score = [p["score"] for p in points]
        errors = [[s - p["low"] for s, p in zip(score, points)], [p["high"] - s for s, p in zip(score, points)]]
        label = "pooled MBR" if name == "mbr" else f"{name} MBR"
        ax.errorbar(
            n,
            score,
            yerr=errors,
            marker="o",
            capsize=3,
            linewidth=2.2 if name == "mbr" else 1.4,
            elinewidth=1,
            label=label,
            color=colors[name],
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(scaling["sizes"], [str(n) for n in scaling["sizes"]])
    ax.minorticks_off()
    ax.set(
        title=f"MBR dev score by candidates per model ({scaling['rows']} dev rows, 95% CI)",
        xlabel="N candidates",
        ylabel="dev score",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(
    run_id: str,
    rows: list[dict[str, Any]],
    ensemble: dict[str, Any] | None,
    champion: dict[str, Any] | None,
    decision: dict[str, Any] | None,
    plot_url: str | None,
    status: str = "trained",
) -> str:
    """Challenger against champion per model and for the ensemble, the decision, and the plot link."""
    lines = [f"# train-all `{run_id}`", ""]
    if status == "unchanged":
        lines += [
            "**Unchanged**: data, config and code match an earlier run; nothing was retrained (0 GPU seconds).",
            "",
        ]
    if champion:
        same = ensemble is None or champion.get("dev_sha256") == ensemble.get("dev_sha256")
        note = "" if same else " (scored on other dev data)"
        lines += [
            f"Champion: `{champion['run_id']}/{champion['model']}`, dev score {champion['dev_score']:.2f}{note}.",
            "",
        ]
    else:
        lines += ["No champion yet.", ""]
    champ_scores = (champion or {}).get("member_scores", {})
    lines += ["| model | status | dev score | champion | change | seconds |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        ours, theirs = row.get("dev_score"), champ_scores.get(row["model"])
        change = _cell(ours - theirs) if ours is not None and theirs is not None else "-"
        lines.append(
            f"| {row['model']} | {row['status']} | {_cell(ours)} | {_cell(theirs)} | {change} "
            f"| {row.get('seconds') if row.get('seconds') is not None else '-'} |"
        )
    if ensemble:
        theirs = (champion or {}).get("dev_score")
        change = _cell(ensemble["dev_score"] - theirs) if theirs is not None else "-"
        lines.append(
            f"| **ensemble** ({ensemble['choice']}) | | **{_cell(ensemble['dev_score'])}** | {_cell(theirs)} "
            f"| {change} | |"
        )
        if ensemble.get("headline"):
            lines += ["", f"Ensemble ({ensemble['choice']}): {ensemble['headline']}."]
    if decision:
        verdict = "promoted" if decision["promoted"] else "not promoted"
        lines += ["", f"**Decision: {verdict}.** {decision['reason']}"]
        diff = decision.get("comparison")
        if diff:
            lines += [
                "",
                f"Challenger - champion: {diff['mean']:+.2f} ({diff['confidence']:.0%} CI {diff['low']:+.2f} "
                f"to {diff['high']:+.2f}) on {diff['rows']} dev rows, paired bootstrap.",
            ]
    if plot_url:
        lines += ["", f"[Loss curves and dev scores (PNG)]({plot_url})", "", f"![report]({plot_url})"]
    return "\n".join(lines) + "\n"
