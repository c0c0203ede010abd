"""A sweep's pictures and overlay: history.png tells completed from pruned trials, importance.png warns when it
rests on few trials, best.yaml reproduces the sweep's own mode."""

from __future__ import annotations

import optuna
import pytest

from dialsum.tuning.outputs import best_overlay, history_figure, importance_figure


def _study(completed: list[float], pruned: list[float] = (), failed: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s1", direction="maximize")
    for value in completed:
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.001, 0.1)})
        study.tell(trial, value)
    for value in pruned:
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.001, 0.1)})
        trial.report(value, 2)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    for _ in range(failed):
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    return study


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def test_history_tells_completed_final_values_from_pruned_partial_ones() -> None:
    fig = history_figure(_study([40.0, 42.5, 41.0], pruned=[12.0, 8.0]), "dev_score")
    ax = fig.axes[0]
    assert sorted(_legend(ax)) == [
        "best so far (completed only)",
        "completed (final value)",
        "pruned (partial value, not final)",
    ]
    assert ax.get_ylabel() == "dev_score (higher is better)" and "value" != ax.get_ylabel()
    assert all(float(tick).is_integer() for tick in ax.get_xticks())
    assert any("partial" in text.get_text() for text in fig.texts)
    assert sorted(a.get_text() for a in ax.texts) == ["step 2", "step 2"]  # where each pruned trial stopped
    completed, pruned = ax.collections[:2]
    assert completed.get_facecolor().any() and not pruned.get_facecolor().any()  # pruned markers are hollow


def test_history_has_a_legend_entry_only_for_what_is_drawn() -> None:
    fig = history_figure(_study([1.0, 2.0]), "dev_score")
    assert sorted(_legend(fig.axes[0])) == ["best so far (completed only)", "completed (final value)"]
    assert not fig.texts and "failed" not in fig.axes[0].get_title()
    failed = history_figure(_study([1.0], failed=2), "dev_loss")
    assert "failed (no value)" in _legend(failed.axes[0]) and _legend(failed.axes[0]).count("failed (no value)") == 1


@pytest.mark.parametrize(("completed", "warned"), [(2, True), (5, False)])
def test_importance_warns_when_it_rests_on_fewer_than_5_completed_trials(completed: int, warned: bool) -> None:
    fig = importance_figure(_study([float(i) for i in range(completed)]), {"lr": 1.0})
    notes = [text.get_text() for text in fig.texts]
    assert bool(notes) == warned
    if warned:
        assert notes == [f"Only {completed} completed trials (fewer than 5): these importances are not reliable."]


def test_best_yaml_reproduces_a_debug_sweep_with_debug() -> None:
    study = _study([1.0])
    debug = best_overlay(study, "m", [], True)
    assert "# Reproduce it: dialsum train --models m --overlay best.yaml --debug\n" in debug
    assert "# Reproduce it: dialsum train --models m --overlay best.yaml\n" in best_overlay(study, "m", [])
