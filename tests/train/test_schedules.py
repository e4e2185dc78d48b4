"""Learning-rate schedule and target-L0 controller: pure functions of the step, so resume is exact."""

from __future__ import annotations

import math

import pytest

from saescope.train.schedules import TargetL0Controller, learning_rate


def rate(step: int, **kwargs: float) -> float:
    settings: dict[str, float] = {
        "peak": 1e-3, "warmup_steps": 10, "warmup_start_fraction": 0.1, "total_steps": 100, "decay_fraction": 0.2,
    }  # fmt: skip
    settings.update(kwargs)
    return learning_rate(step, **settings)  # type: ignore[arg-type]


def test_warmup_rises_from_the_start_fraction_to_the_peak_then_decays_linearly_to_zero() -> None:
    assert rate(0) == pytest.approx(1e-4)
    assert rate(5) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # halfway along the cosine
    assert all(rate(s) < rate(s + 1) for s in range(9))
    assert rate(10) == rate(79) == pytest.approx(1e-3)
    assert rate(80) == pytest.approx(1e-3)
    assert rate(90) == pytest.approx(0.5e-3)
    assert rate(100) == 0.0


def test_no_decay_is_the_paper() -> None:
    assert rate(99, decay_fraction=0.0) == pytest.approx(1e-3)


def test_the_controller_raises_lambda_above_the_target_and_lowers_it_below() -> None:
    controller = TargetL0Controller(target_l0=50.0, gain=0.1)
    controller.update(100.0)  # twice the target: log-scale grows by gain
    assert controller.scale == pytest.approx(math.exp(0.1))
    for _ in range(3):
        controller.update(25.0)  # half the target: it shrinks by gain/2 each step
    assert controller.log_scale == pytest.approx(0.1 - 3 * 0.05)
    controller.update(50.0)
    assert controller.log_scale == pytest.approx(-0.05)  # on target: unchanged


def test_the_controller_is_bounded() -> None:
    controller = TargetL0Controller(target_l0=1.0, gain=1.0)
    for _ in range(100):
        controller.update(1000.0)
    assert controller.log_scale == controller.max_log_scale
