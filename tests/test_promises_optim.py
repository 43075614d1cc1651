"""Learning-rate schedules and optimizer state against values worked out by hand (written
here from the formulas), including the edges mutation testing found unguarded: fractional
epochs, past the end, the floor, warm-up at 0, the defaults of ``make_schedule``."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphnet as gn
from graphnet import optim


def half_cosine(t: float, floor: float = 0.0) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


@pytest.mark.parametrize("epochs, floor, warmup, at, want", [
    (4, 0.0, 0, 2.0, 0.5),
    (4, 0.2, 0, 2.0, 0.2 + 0.8 * 0.5),        # the floor scales the cosine
    (4, 0.2, 0, 9.0, 0.2),                     # past the end: stays at the floor
    (2, 0.0, 0, 3.0, 0.0),
    (0.5, 0.0, 0, 0.25, 0.5),                  # fewer than one epoch in all
    (1.5, 0.0, 1, 1.25, 0.5),                  # half an epoch of cosine after the warm-up
    (10, 0.0, 2, 6.0, half_cosine(4 / 8)),
])
def test_cosine_values(epochs, floor, warmup, at, want):
    assert optim.CosineLR(epochs, floor, warmup)(at) == pytest.approx(want, abs=1e-12)


def test_cosine_warmup_starts_small_but_positive():
    s = optim.CosineLR(10, warmup=2)
    assert 0 < s(0.0) < 1e-2
    assert s(1.0) == pytest.approx(0.5, abs=1e-3) and s(2.0) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [0, -1])
def test_cosine_needs_positive_epochs(bad):
    with pytest.raises(ValueError, match=rf"CosineLR.*epochs.*> 0, got {bad}"):
        optim.CosineLR(bad)
    assert optim.CosineLR(1)(0.5) == pytest.approx(0.5)


def test_step_schedule_defaults_and_validation():
    s = optim.StepLR(2)
    assert [s(e) for e in (0, 1.9, 2, 3.5, 4)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    for bad in (0, -3):
        with pytest.raises(ValueError, match=rf"step_size must be (> 0|>= 1), got {bad}"):
            optim.StepLR(bad)


def test_make_schedule_names_and_defaults():
    assert optim.make_schedule(None, 5)(3) == optim.make_schedule("none", 5)(3) == 1.0
    assert optim.make_schedule("constant", 5)(3) == 1.0
    step = optim.make_schedule("step", 9)  # every epochs // 3 epochs, times 0.1
    assert [step(e) for e in (2.9, 3, 6)] == pytest.approx([1, 0.1, 0.01])
    assert optim.make_schedule("step", 2)(1) == pytest.approx(0.1)  # at least every epoch
    assert optim.make_schedule("step", 9, step_size=2, gamma=0.5)(4) == pytest.approx(0.25)
    plain = optim.make_schedule("cosine", 4)  # no floor, no warm-up by default
    assert [plain(e) for e in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0])
    cos = optim.make_schedule("cosine", 4, floor=0.1, warmup=1)
    assert cos(2.5) == pytest.approx(half_cosine(0.5, 0.1))
    with pytest.raises(ValueError, match="unknown schedule 'STEP'"):
        optim.make_schedule("STEP", 3)


def test_schedule_configs_name_every_setting():
    assert optim.Schedule().config() == {"type": "constant"}
    assert optim.StepLR(3, 0.5).config() == {"type": "step", "step_size": 3, "gamma": 0.5}
    assert optim.CosineLR(4, 0.1, 1).config() == {"type": "cosine", "epochs": 4.0, "floor": 0.1,
                                                  "warmup": 1.0}


def test_optimizer_host_state_scalars():
    p = gn.Parameter(np.ones((2, 2)))
    opt = optim.SGD([p], lr=0.3, momentum=0.5, weight_decay=0.01)
    opt.step({p: np.ones((2, 2))})
    arrays, meta = opt.host_state()
    assert meta == {"type": "SGD", "lr": 0.3, "steps": 1, "weight_decay": 0.01}
    assert set(arrays) == {"velocity.0"}


def test_optimizer_state_round_trip_and_refusals(numpy_backend):
    w = gn.Parameter(np.ones((2, 2)), name="w")
    fresh = optim.Adam([w], lr=0.01)
    arrays, meta = fresh.host_state()  # no step yet: no moment arrays
    again = optim.Adam([w], lr=0.01)
    again.load_host_state(arrays, meta)
    assert again.state == {"m": [None], "v": [None]}
    fresh.step({w: np.full((2, 2), 0.5)})
    arrays, meta = fresh.host_state()
    again.load_host_state(arrays, meta)
    np.testing.assert_array_equal(gn.to_numpy(again.state["m"][0]), gn.to_numpy(fresh.state["m"][0]))
    assert again.steps == 1
    with pytest.raises(ValueError, match=r"^optimizer state is for Adam, not SGD$"):
        optim.SGD([w], lr=0.1, momentum=0.9).load_host_state(arrays, meta)
    bad = {"m.0": np.zeros(3), "v.0": np.zeros((2, 2))}
    with pytest.raises(ValueError, match=r"^optimizer slot m\.0 has shape \(3,\), parameter 'w' "
                                         r"has \(2, 2\)$"):
        again.load_host_state(bad, meta)


@pytest.mark.parametrize("make", [optim.SGD, optim.Adam])
def test_optimizer_errors_name_the_setting_and_value(make):
    p = gn.Parameter(np.ones((2, 2)))
    for lr in (0, -1):
        with pytest.raises(ValueError, match=rf"(lr|learning rate) must be > 0, got {lr}"):
            make([p], lr=lr)
    with pytest.raises(ValueError, match=r"weight_decay must be >= 0, got -0.5"):
        make([p], lr=0.1, weight_decay=-0.5)
    frozen = gn.Parameter(np.ones(2), trainable=False)
    with pytest.raises(ValueError, match="got no trainable parameters"):
        make([frozen], lr=0.1)


def test_sgd_defaults_and_momentum_checks():
    p = gn.Parameter(np.ones((2, 2)))
    sgd = optim.SGD([p])
    assert (sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.1, 0.0, False, 0.0)
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"momentum must be in \[0, 1\), got {bad:g}"):
            optim.SGD([p], lr=0.1, momentum=bad)
    with pytest.raises(ValueError, match=r"(Nesterov momentum|SGD nesterov=True) needs momentum > 0$"):
        optim.SGD([p], lr=0.1, nesterov=True)
