"""The one warm-up + cosine schedule: its factors on hand-computed steps, the warm-up lengths, the LambdaLR it
builds (learning rates per step, state_dict round trip) and the Lightning return value."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vislab.engine.schedules import WarmupCosine, lightning_warmup_cosine, warmup_cosine, warmup_steps


def test_factor_warms_up_linearly_then_follows_a_half_cosine_to_zero():
    f = WarmupCosine(4, 12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0  # cosine starts at 1
    assert f(8) == pytest.approx(0.5)  # half way through the 8 cosine steps
    assert f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert f(12) == pytest.approx(0.0) and f(50) == pytest.approx(0.0)  # clipped after the end
    assert WarmupCosine(0, 10)(0) == 1.0  # no warm-up: starts at the peak


def test_factor_refuses_bad_lengths():
    with pytest.raises(ValueError, match="total must be >= 1, got 0"):
        WarmupCosine(0, 0)
    with pytest.raises(ValueError, match=r"warmup \(5\) must not exceed total \(3\)"):
        WarmupCosine(5, 3)
    with pytest.raises(TypeError, match="warmup must be an int, got float"):
        WarmupCosine(1.5, 3)


def test_warmup_steps_from_epochs_or_a_fraction():
    assert warmup_steps(100, epochs=10, warmup_epochs=2.0) == 20
    assert warmup_steps(100, epochs=10, warmup_epochs=0.0) == 0
    assert warmup_steps(10, epochs=1, warmup_epochs=5.0) == 9  # at most total - 1: the cosine gets a step
    assert warmup_steps(100, fraction=0.05) == 5
    assert warmup_steps(10, fraction=0.01) == 1  # at least one step
    with pytest.raises(ValueError, match="exactly one of"):
        warmup_steps(10, epochs=1, warmup_epochs=1.0, fraction=0.1)
    with pytest.raises(ValueError, match="fraction must lie in"):
        warmup_steps(10, fraction=1.5)


def test_lambdalr_learning_rates_and_state_round_trip():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = warmup_cosine(opt, warmup=2, total=6)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * WarmupCosine(2, 6)(s) for s in range(7)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1) and lrs[6] == pytest.approx(0.0)
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == {"total": 6, "warmup": 2}  # saved (a closure would be saved as None)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = warmup_cosine(opt2, warmup=0, total=1)
    sched2.load_state_dict(state)
    assert (sched2.lr_lambdas[0].warmup, sched2.lr_lambdas[0].total) == (2, 6)


def test_lightning_return_value_steps_every_batch():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    out = lightning_warmup_cosine(opt, SimpleNamespace(estimated_stepping_batches=40, max_epochs=4),
                                  warmup_epochs=0.5)
    assert out["optimizer"] is opt and out["lr_scheduler"]["interval"] == "step"
    f = out["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert (f.warmup, f.total) == (5, 40)
    out = lightning_warmup_cosine(opt, SimpleNamespace(estimated_stepping_batches=40, max_epochs=4), fraction=0.1)
    assert out["lr_scheduler"]["scheduler"].lr_lambdas[0].warmup == 4
