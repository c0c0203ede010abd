"""The train-all report: the PNG is a real image with both panels, the markdown compares and links it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from dialsum.release import report

ROWS = [
    {"model": "kobart", "status": "completed", "dev_score": 41.5, "seconds": 100.0},
    {"model": "qwen3-4b", "status": "unchanged", "dev_score": 44.0, "seconds": 0.0},
    {"model": "llama", "status": "failed", "dev_score": None, "seconds": 3.0},
]
CHAMPION = {
    "run_id": "night-1",
    "model": "ensemble",
    "dev_score": 43.0,
    "dev_sha256": "d1",
    "member_scores": {"kobart": 40.0, "qwen3-4b": 44.0},
}
ENSEMBLE = {"choice": "consensus", "dev_score": 45.25, "dev_sha256": "d1"}


def test_the_plot_is_a_png_with_curves_and_bars(tmp_path: Path) -> None:
    losses = {"kobart": [3.0 - 0.01 * i for i in range(200)], "qwen3-4b": [2.5 - 0.005 * i for i in range(120)]}
    path = report.plot(
        tmp_path / "ensemble" / report.PLOT,
        losses,
        {"kobart": 41.5, "qwen3-4b": 44.0, "ensemble": 45.25},
        {"kobart": 40.0, "qwen3-4b": 44.0, "ensemble": 43.0},
        "train-all r1",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1200, 450)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert len(colours) > 50, "the image is (nearly) blank"
    counts = {rgb: n for n, rgb in colours}
    assert counts.get((0x1F, 0x77, 0xB4), 0) > 500 and counts.get((0xFF, 0x7F, 0x0E), 0) > 500  # one colour a model


def test_every_score_bar_has_its_interval_on_an_axis_zoomed_to_the_scores() -> None:
    scores = {"kobart": 85.8, "qwen3-4b": 86.1, "ensemble": 86.4}
    rows = {"kobart": [80.0, 91.6, 85.8], "qwen3-4b": [84.0, 88.2, 86.1], "ensemble": [85.0, 87.8, 86.4]}
    intervals = report.intervals_of(rows)
    assert all(low <= sum(rows[n]) / 3 <= high for n, (low, high) in intervals.items())
    fig = report.figure(
        {},
        scores,
        {"kobart": 85.0, "ensemble": 86.0},
        "r1",
        intervals,
        {"kobart": (84.0, 86.0), "ensemble": (85.5, 86.5)},
    )
    bars = fig.axes[1]
    errorbars = [c for c in bars.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(errorbars) == 5  # three of this run, two of the champion's
    low, high = bars.get_ylim()
    assert 75 < low < 84 and 86.5 < high < 100, (low, high)  # not 0-105: 85.8 and 86.1 look different


def test_a_model_keeps_its_colour_in_every_figure_of_a_run() -> None:
    colors = report.model_colors(["qwen3-4b", "kobart", "llama"])
    fig = report.figure(
        {"kobart": [1.0, 0.9], "qwen3-4b": [2.0, 1.5]}, {"kobart": 40.0, "qwen3-4b": 44.0}, None, "r1", colors=colors
    )
    scaling = report.scaling_figure(
        {**SCALING, "series": {k: v for k, v in SCALING["series"].items() if k != "kobart"}}, "r1", colors=colors
    )
    from matplotlib.colors import to_hex

    lines = {line.get_label(): to_hex(line.get_color()) for line in fig.axes[0].get_lines()}
    handles, labels = scaling.axes[0].get_legend_handles_labels()
    series = {label: to_hex(handle[0].get_color()) for handle, label in zip(handles, labels)}
    assert lines == {"kobart": colors["kobart"], "qwen3-4b": colors["qwen3-4b"]}
    assert series["qwen3-4b MBR"] == colors["qwen3-4b"] and len(set(colors.values())) == 4


def test_the_markdown_compares_with_the_champion_and_links_the_plot() -> None:
    url = "http://127.0.0.1:9000/b/runs/r2/ensemble/report.png?X-Amz-Signature=abc"
    decision = {"promoted": True, "reason": "dev score 45.25 beats the champion's 43.00 by 2.25"}
    text = report.markdown("r2", ROWS, ENSEMBLE, CHAMPION, decision, url)
    assert "Champion: `night-1/ensemble`, dev score 43.00." in text
    assert "| kobart | completed | 41.50 | 40.00 | 1.50 | 100.0 |" in text
    assert "| qwen3-4b | unchanged | 44.00 | 44.00 | 0.00 | 0.0 |" in text
    assert "| llama | failed | - | - | - | 3.0 |" in text
    assert "| **ensemble** (consensus) | | **45.25** | 43.00 | 2.25 | |" in text
    assert "**Decision: promoted.** dev score 45.25 beats" in text
    assert f"[Loss curves and dev scores (PNG)]({url})" in text and f"![report]({url})" in text


def test_the_markdown_says_when_the_champion_was_scored_on_other_dev_data() -> None:
    text = report.markdown("r3", ROWS[:1], {**ENSEMBLE, "dev_sha256": "d2"}, CHAMPION, None, None)
    assert "(scored on other dev data)" in text and "Decision" not in text
    unchanged = report.markdown("r4", ROWS[:1], None, None, None, None, status="unchanged")
    assert "**Unchanged**" in unchanged and "No champion yet." in unchanged


SCALING = {
    "sizes": [1, 2, 4, 8, 16],
    "rows": 499,
    "series": {
        name: [
            {"n": n, "score": base + k, "low": base + k - 0.7, "high": base + k + 0.7}
            for k, n in enumerate([1, 2, 4, 8, 16])
        ]
        for name, base in (("mbr", 46.0), ("kobart", 43.0), ("qwen3-4b", 45.0))
    },
}


def test_the_n_scaling_plot_draws_every_series_with_its_intervals(tmp_path: Path) -> None:
    path = report.plot_scaling(tmp_path / report.SCALING_PLOT, SCALING, "train-all r1")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (700, 450)
        colours = {rgb for _, rgb in image.convert("RGB").getcolors(maxcolors=1_000_000)}
    for line in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x22, 0x22, 0x22)):  # one colour per series
        assert line in colours
    fig = report.scaling_figure(SCALING, "train-all r1")
    errorbars = [c for c in fig.axes[0].containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(errorbars) == 3  # error bars, no overlapping bands:
    assert not [c for c in fig.axes[0].collections if "Poly" in type(c).__name__]


def test_the_markdown_prints_the_promotion_difference_with_its_interval() -> None:
    comparison = {"mean": 1.234, "low": 0.41, "high": 2.02, "rows": 250, "confidence": 0.95}
    decision = {"promoted": True, "reason": "challenger 46.10 vs champion 44.87: ...", "comparison": comparison}
    ensemble = {**ENSEMBLE, "headline": "held-out score 45.80 (95% CI 44.90 to 46.70) on 250 dev rows"}
    text = report.markdown("r5", ROWS[:1], ensemble, CHAMPION, decision, None)
    assert "Challenger - champion: +1.23 (95% CI +0.41 to +2.02) on 250 dev rows, paired bootstrap." in text
    assert "Ensemble (consensus): held-out score 45.80 (95% CI 44.90 to 46.70) on 250 dev rows." in text
