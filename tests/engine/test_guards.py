"""Non-finite losses and gradients: the step is skipped and counted; too many in a row stop the run."""

import math

import pytest
import torch

from dialsum.config import load_model_config
from dialsum.data import load_splits, placeholders_in
from dialsum.engine.guards import NonFiniteError
from dialsum.engine.trainer import fit
from dialsum.models import checkpoint_source, family


class Poisoned:
    """A family whose loss turns NaN (`kind="loss"`) or gives NaN gradients with a finite loss (`kind="grad"`) on
    the listed optimizer steps (grad_accum 1: one loss call per step)."""

    def __init__(self, fam, bad_steps, kind):
        self.fam, self.bad, self.kind, self.calls = fam, set(bad_steps), kind, 0

    def __getattr__(self, name):
        return getattr(self.fam, name)

    def loss(self, model, batch, label_smoothing=0.0):
        self.calls += 1
        value = self.fam.loss(model, batch)
        if self.calls not in self.bad:
            return value
        if self.kind == "loss":
            return value * float("nan")
        weight = next(p for p in model.parameters() if p.requires_grad)
        return value + torch.sqrt(weight.sum() * 0.0)  # sqrt'(0) * 0 = NaN gradient; the loss stays finite


@pytest.fixture(scope="module")
def setup():
    cfg = load_model_config("tiny-bart")
    splits = load_splits(None)
    fam = family(cfg)
    _, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"]))
    feats = fam.build_features(cfg, tok, splits["train"][:32], with_labels=True)
    t = cfg.training.model_copy(update={"batch_size": 4, "grad_accum": 1, "max_bad_steps": 3, "log_every": 2})
    return cfg, fam, tok, feats, t, splits


def _model(cfg, fam, splits):
    return fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"]))[0]


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_and_counted(setup, kind):
    cfg, fam, tok, feats, t, splits = setup
    model = _model(cfg, fam, splits)
    result = fit(t, Poisoned(fam, {2, 4}, kind), model, tok, feats, max_steps=5, show_progress=False)
    assert result.steps == 5 and result.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    finite = [math.isfinite(v) for v in result.losses]
    assert finite == ([True, False, True, False, True] if kind == "loss" else [True] * 5)


def test_bad_steps_in_a_row_stop_the_run_naming_the_step_and_never_touch_the_weights(setup):
    cfg, fam, tok, feats, t, splits = setup
    model = _model(cfg, fam, splits)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteError, match=r"step 3: .*3 steps in a row"):
        fit(t, Poisoned(fam, range(1, 100), "loss"), model, tok, feats, max_steps=8, show_progress=False)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
