"""Evaluation during training: the best evaluation's weights are shipped, and patience stops a run that got worse."""

import pytest
import torch

from dialsum.config import load_model_config
from dialsum.data import load_splits, placeholders_in
from dialsum.engine.evaluation import BestTracker, Evaluator
from dialsum.engine.trainer import fit
from dialsum.models import checkpoint_source, family


class TurnsBad:
    """A family that trains normally for `good` loss calls, then ascends the loss: a run that peaks early."""

    def __init__(self, fam, good):
        self.fam, self.good, self.calls = fam, good, 0

    def __getattr__(self, name):
        return getattr(self.fam, name)

    def loss(self, model, batch, label_smoothing=0.0):
        value = self.fam.loss(model, batch)
        if not model.training:  # dev loss: evaluation sees the true loss
            return value
        self.calls += 1
        return value if self.calls <= self.good else -20 * value


@pytest.mark.slow
def test_a_run_that_peaks_early_ships_the_best_step_and_stops_on_patience():
    cfg = load_model_config("tiny-bart")
    update = {
        "epochs": 20,
        "batch_size": 8,
        "eval_score_rows": 16,
        "eval_loss_rows": 16,
        "eval_every": 2,
        "early_stopping_patience": 2,
        "best_metric": "dev_score",
    }
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update=update)})
    splits = load_splits(None)
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"]))
    feats = fam.build_features(cfg, tok, splits["train"][:40], with_labels=True)  # 5 steps per epoch
    evaluator = Evaluator(cfg, fam, tok, splits["dev"])
    result = fit(cfg.training, TurnsBad(fam, good=5), model, tok, feats, show_progress=False, evaluation=evaluator)

    curve, best = result.evaluation["curve"], result.evaluation["best"]
    scores = {r["step"]: r["dev_score"] for r in curve if "dev_score" in r}
    steps = [s for s in range(1, result.steps + 1) if s % 2 == 0 or s % 5 == 0]
    assert [r["step"] for r in curve] == steps  # dev loss every 2 steps and at each epoch end
    assert sorted(scores) == list(range(5, result.steps + 1, 5))  # the score at each epoch end only
    assert all(r["dev_loss"] > 0 and r["train_loss"] is not None for r in curve)
    assert best["metric"] == "dev_score" and best["value"] == max(scores.values()) == scores[best["step"]]
    assert best["step"] == 5 < result.steps, curve  # the peak: the first epoch, before the loss turned
    assert result.stopped_early and result.evaluation["stopped_early"] and result.steps < 100
    assert result.steps == best["step"] + 2 * 5  # two epoch-end scores without improvement
    assert result.evaluation["restored_best"]
    assert evaluator.dev_score(model) == pytest.approx(best["value"])  # the shipped weights are the best step's
    assert scores[result.steps] < best["value"]


def test_tracker_lower_loss_wins_and_state_round_trips():
    model = torch.nn.Linear(2, 1)
    tracker = BestTracker("dev_loss", patience=2)
    for step, loss in ((1, 3.0), (2, 2.0), (3, 2.5)):
        with torch.no_grad():
            model.weight.fill_(step)
        assert not tracker.update({"step": step, "dev_loss": loss}, model)
    assert (tracker.best_step, tracker.best_value, tracker.since_best) == (2, 2.0, 1)
    resumed = BestTracker("dev_loss", patience=2)
    resumed.load_state_dict(tracker.state_dict())
    assert resumed.update({"step": 4, "dev_loss": 2.0}, model)  # a tie is no improvement: patience runs out
    assert resumed.restore(model) and torch.equal(model.weight, torch.full((1, 2), 2.0))


def test_an_equal_score_goes_to_the_lower_dev_loss():
    model = torch.nn.Linear(2, 1)
    tracker = BestTracker("dev_score")
    for step, loss in ((1, 3.0), (2, 2.0), (3, 2.5)):
        tracker.update({"step": step, "dev_loss": loss, "dev_score": 0.0}, model)
    assert (tracker.best_step, tracker.since_best) == (2, 1)


def test_the_held_out_score_is_measured_on_the_held_out_part_only():
    from dialsum import metric
    from dialsum.data import holdout
    from dialsum.engine.evaluation import held_out, selection_score

    cfg = load_model_config("tiny-bart")
    dev = load_splits(None)["dev"]
    split = holdout.dev_split()
    selection, held = split.parts([ex.fname for ex in dev])
    assert selection and held
    preds = [ex.summary if ex.fname in selection else "엉뚱한 이야기: 오늘은 비가 온다." for ex in dev]
    refs = {ex.fname: ex.summary for ex in dev}
    chosen = held_out(cfg, dev, preds, {"restored_best": True, "stopped_early": False})
    assert (chosen["selection_rows"], chosen["rows"]) == (len(selection), len(held))
    wrong = [p for p, ex in zip(preds, dev) if ex.fname in held]
    assert chosen["score"] == metric.score(wrong, [refs[f] for f in held])["score"] < 20
    assert chosen["split"] == split.record([ex.fname for ex in dev])
    assert chosen["split"]["held_out_sha256"] == holdout.fnames_hash(held)
    assert selection_score(dev, preds) == {"score": pytest.approx(100), "rows": len(selection)}
    untouched = held_out(cfg, dev, preds, {"restored_best": False, "stopped_early": False})
    assert untouched["score"] == chosen["score"] and untouched["selected_by"] == "nothing chosen on dev by training"


class Features:
    """A family stand-in whose features are the rows themselves (no model needed to see which rows it reads)."""

    @staticmethod
    def build_features(cfg, tok, rows, with_labels):
        return list(rows)


@pytest.mark.parametrize("metric_name", ["dev_score", "dev_loss"])
def test_the_best_step_is_chosen_on_the_first_selection_rows_only(metric_name):
    from dialsum.data import holdout

    cfg = load_model_config("tiny-bart")
    update = {"eval_score_rows": 10, "eval_loss_rows": 12, "best_metric": metric_name}
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update=update)})
    dev = load_splits(None)["dev"]
    evaluator = Evaluator(cfg, Features, None, dev)
    selection, _ = holdout.dev_split().parts([ex.fname for ex in dev])
    assert [ex.fname for ex in evaluator.score_rows] == selection[:10]
    assert [ex.fname for ex in evaluator.loss_features] == selection[:12]
