"""Optimizers and learning-rate schedules built from the training config."""

import math

import pytest
import torch

from dialsum.config import TrainingConfig
from dialsum.engine.optim import build_optimizer, build_scheduler, warmup_steps
from dialsum.models.common import seed_everything


def _curve(schedule: str, steps: int = 40, warmup: float = 0.1) -> list[float]:
    t = TrainingConfig(lr_scheduler=schedule, warmup_steps=warmup, learning_rate=1.0)
    optimizer = build_optimizer(t, [{"params": [torch.nn.Parameter(torch.zeros(2))]}])
    scheduler = build_scheduler(t, optimizer, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_every_schedule_warms_up_linearly_to_the_peak(schedule):
    lrs = _curve(schedule)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_schedule_shapes_after_warmup():
    linear, cosine, constant = _curve("linear"), _curve("cosine"), _curve("constant")
    assert constant[4:] == pytest.approx([1.0] * 36)
    # Linear falls by the same amount every step; cosine falls slowly, then fast, then slowly, to zero.
    assert [a - b for a, b in zip(linear[4:], linear[5:])] == pytest.approx([1 / 36] * 35)
    assert linear[-1] > 0 and cosine[-1] > 0 and linear[-1] == pytest.approx(1 / 36)
    quarter, half = 4 + 9, 4 + 18
    assert cosine[quarter] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 36)))
    assert cosine[half] == pytest.approx(0.5) and linear[half] == pytest.approx(0.5)
    assert cosine[quarter] > linear[quarter] and cosine[-5] < linear[-5]


def test_warmup_as_a_step_count():
    assert _curve("constant", steps=10, warmup=4)[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_adamw_is_fused_where_available_and_keeps_group_decay():
    model = torch.nn.Linear(8, 4)
    t = TrainingConfig(optimizer="adamw", weight_decay=0.1)
    optimizer = build_optimizer(
        t, [{"params": [model.weight], "weight_decay": 0.1}, {"params": [model.bias], "weight_decay": 0.0}]
    )
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizers_construct_and_step_on_cpu(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 4))  # 8192 weights: 8-bit states
    t = TrainingConfig(optimizer=name, learning_rate=1e-2)
    optimizer = build_optimizer(t, [{"params": list(model.parameters()), "weight_decay": 0.0}])
    assert type(optimizer).__module__.startswith("bitsandbytes")
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(16, 128), torch.randn(16, 4)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert losses[-1] < losses[0]
    state = optimizer.state[model[0].weight]
    assert state["state1"].dtype == torch.uint8  # the big matrix's moments really are 8-bit


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup", [0.0, 0.1, 7])
def test_every_schedule_is_transformers_own_curve(schedule, warmup):
    from transformers import get_scheduler

    t = TrainingConfig(lr_scheduler=schedule, warmup_steps=warmup, learning_rate=1.0)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_scheduler(
        {"constant": "constant_with_warmup"}.get(schedule, schedule),
        theirs,
        num_warmup_steps=warmup_steps(t, 40),
        num_training_steps=40,
    )
    expected = []
    for _ in range(40):
        expected.append(hf.get_last_lr()[0])
        theirs.step()
        hf.step()
    assert _curve(schedule, warmup=warmup) == expected


def test_seeding_draws_what_transformers_set_seed_draws():
    import random

    import numpy as np
    from transformers import set_seed

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    set_seed(7)
    theirs = draws()
    seed_everything(7)
    assert draws() == theirs
