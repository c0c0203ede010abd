"""The train-all report: PNGs in the ensemble folder and a markdown summary for Prefect and W&B.

`report.png` has two panels: the training loss per optimizer step of every model (from its `metrics.json`,
`train_losses`), and each model's and the ensemble's dev score next to the champion's (the champion in
service when the run started). Beside it, for runs with candidates, `n_scaling.png`: dev score against the
number of MBR candidates N (1, 2, 4, 8, 16), pooled and per model, with 95% intervals. The markdown compares
challenger and champion per model and for the ensemble (with its held-out score), states the promotion
decision with the challenger - champion difference and its interval, and links the PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT = "report.png"
SCALING_PLOT = "n_scaling.png"


def plot(path: Path, losses: dict[str, list[float]], scores: dict[str, float],
         champion_scores: dict[str, float] | None, title: str) -> Path:
    """Write the two-panel PNG to `path` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for model, curve in losses.items():
        if curve:
            left.plot(range(1, len(curve) + 1), curve, label=model, linewidth=1.4)
    left.set(title="Training loss", xlabel="optimizer step (bucketed beyond 500)", ylabel="loss")
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if any(losses.values()):
        left.legend(fontsize=8)
    left.grid(alpha=0.3)

    names = list(scores)
    champion_scores = champion_scores or {}
    x = range(len(names))
    width = 0.38
    ours = right.bar([i - width / 2 for i in x], [scores[n] for n in names], width, label="this run", color="#3b7dd8")
    pairs = [(ours, [scores[n] for n in names])]
    if champion_scores:
        theirs = right.bar([i + width / 2 for i in x], [champion_scores.get(n, 0.0) for n in names], width,
                           label="champion", color="#b0b0b0")
        pairs.append((theirs, [champion_scores.get(n) for n in names]))
    for bars, values in pairs:
        for bar, value in zip(bars, values):
            if value is not None:
                right.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                               ha="center", va="bottom", fontsize=8)
    right.set_xticks(list(x), names, rotation=15, fontsize=8)
    right.set(title="Dev score (100 x mean ROUGE-1/2/L F1)", ylabel="dev score", ylim=(0, 105))
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def plot_scaling(path: Path, scaling: dict[str, Any], title: str) -> Path:
    """Dev score against N (log2 axis) for pooled MBR and each model's own MBR, 95% intervals as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, points in scaling["series"].items():
        n = [p["n"] for p in points]
        label = "pooled MBR" if name == "mbr" else f"{name} MBR"
        line, = ax.plot(n, [p["score"] for p in points], marker="o", linewidth=2.2 if name == "mbr" else 1.4,
                        label=label)
        ax.fill_between(n, [p["low"] for p in points], [p["high"] for p in points], alpha=0.18, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xticks(scaling["sizes"], [str(n) for n in scaling["sizes"]])
    ax.set(title=f"MBR dev score by candidates per model ({scaling['rows']} dev rows, 95% CI)", xlabel="N candidates",
           ylabel="dev score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(run_id: str, rows: list[dict[str, Any]], ensemble: dict[str, Any] | None,
             champion: dict[str, Any] | None, decision: dict[str, Any] | None, plot_url: str | None,
             status: str = "trained") -> str:
    """Challenger against champion per model and for the ensemble, the decision, and the plot link."""
    lines = [f"# train-all `{run_id}`", ""]
    if status == "unchanged":
        lines += ["**Unchanged**: data, config and code match an earlier run; nothing was retrained (0 GPU seconds).", ""]
    if champion:
        same = ensemble is None or champion.get("dev_sha256") == ensemble.get("dev_sha256")
        note = "" if same else " (scored on other dev data)"
        lines += [f"Champion: `{champion['run_id']}/{champion['model']}`, dev score {champion['dev_score']:.2f}{note}.", ""]
    else:
        lines += ["No champion yet.", ""]
    champ_scores = (champion or {}).get("member_scores", {})
    lines += ["| model | status | dev score | champion | change | seconds |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        ours, theirs = row.get("dev_score"), champ_scores.get(row["model"])
        change = _cell(ours - theirs) if ours is not None and theirs is not None else "-"
        lines.append(f"| {row['model']} | {row['status']} | {_cell(ours)} | {_cell(theirs)} | {change} "
                     f"| {row.get('seconds') if row.get('seconds') is not None else '-'} |")
    if ensemble:
        theirs = (champion or {}).get("dev_score")
        change = _cell(ensemble["dev_score"] - theirs) if theirs is not None else "-"
        lines.append(f"| **ensemble** ({ensemble['choice']}) | | **{_cell(ensemble['dev_score'])}** | {_cell(theirs)} "
                     f"| {change} | |")
        if ensemble.get("headline"):
            lines += ["", f"Ensemble ({ensemble['choice']}): {ensemble['headline']}."]
    if decision:
        verdict = "promoted" if decision["promoted"] else "not promoted"
        lines += ["", f"**Decision: {verdict}.** {decision['reason']}"]
        diff = decision.get("comparison")
        if diff:
            lines += ["", f"Challenger - champion: {diff['mean']:+.2f} ({diff['confidence']:.0%} CI {diff['low']:+.2f} "
                          f"to {diff['high']:+.2f}) on {diff['rows']} dev rows, paired bootstrap."]
    if plot_url:
        lines += ["", f"[Loss curves and dev scores (PNG)]({plot_url})", "", f"![report]({plot_url})"]
    return "\n".join(lines) + "\n"
