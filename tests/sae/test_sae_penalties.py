"""Penalty functions and the λ warm-up schedule (method §1.3, §2.1, §7.2)."""

from __future__ import annotations

import pytest
import torch

from saescope.sae import DictionaryConfig, JumpReLU
from saescope.sae.penalties import (
    decoder_weighted_l1_penalty,
    firing_frequency,
    high_frequency_penalty,
    l0_penalty,
    linear_warmup,
    mean_l0,
    quadratic_l0_penalty,
    warmed_coefficient,
)


def test_linear_warmup_is_linear_and_reaches_one_at_the_end() -> None:
    assert linear_warmup(0, 10_000) == 0.0
    assert linear_warmup(2_500, 10_000) == pytest.approx(0.25)
    assert linear_warmup(5_000, 10_000) == pytest.approx(0.5)
    assert linear_warmup(10_000, 10_000) == 1.0
    assert linear_warmup(123_456, 10_000) == 1.0
    assert linear_warmup(0, 0) == 1.0
    assert warmed_coefficient(6e-4, 7_500, 10_000) == pytest.approx(4.5e-4)
    with pytest.raises(ValueError, match="step"):
        linear_warmup(-1, 10)


def test_module_loss_applies_warmup_as_a_function_of_step() -> None:
    torch.manual_seed(0)
    config = DictionaryConfig(d_in=8, width=16, l0_coefficient=0.5, lambda_warmup_steps=100)
    sae = JumpReLU(config, generator=torch.Generator().manual_seed(0))
    x_BD = torch.randn(32, 8)
    at_0, at_50, at_100, at_500 = (sae.loss(x_BD, step=s) for s in (0, 50, 100, 500))
    assert at_0.sparsity_coefficient == 0.0
    assert at_0.sparsity.item() == 0.0
    assert at_50.sparsity_coefficient == pytest.approx(0.25)
    assert at_100.sparsity_coefficient == pytest.approx(0.5)
    assert at_500.sparsity_coefficient == pytest.approx(0.5)
    assert at_100.sparsity.item() == pytest.approx(0.5 * at_100.l0.item(), rel=1e-6)
    assert at_50.sparsity.item() == pytest.approx(0.5 * at_100.sparsity.item(), rel=1e-6)


def _active(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, requires_grad=True)


def test_l0_penalty_value() -> None:
    active_BF = _active([[1, 0, 1, 1], [0, 0, 1, 0]])
    assert mean_l0(active_BF).item() == pytest.approx(2.0)
    assert l0_penalty(active_BF, 0.3).item() == pytest.approx(0.6)


def test_quadratic_l0_penalty_value() -> None:
    active_BF = _active([[1, 1, 1, 1], [1, 1, 0, 0]])  # mean L0 = 3
    value = quadratic_l0_penalty(active_BF, coefficient=0.5, target_l0=2.0, prefactor=2.0)
    assert value.item() == pytest.approx(0.5 * (2.0 / 2.0) * (3.0 - 2.0) ** 2)
    assert quadratic_l0_penalty(active_BF, 0.5, 3.0).item() == 0.0


@pytest.mark.parametrize(("target", "sign"), [(1.0, 1.0), (3.0, -1.0)])
def test_quadratic_l0_gradient_points_toward_target(target: float, sign: float) -> None:
    active_BF = _active([[1, 1, 0, 0], [1, 1, 0, 0]])  # mean L0 = 2
    quadratic_l0_penalty(active_BF, 1.0, target).backward()
    assert active_BF.grad is not None
    expected = sign * 2.0 * (2.0 / target) * abs(2.0 - target) / 2  # 2λc(L̄0 − L0*)/L0* · 1/B
    torch.testing.assert_close(active_BF.grad, torch.full_like(active_BF, expected))


@pytest.mark.parametrize(("target", "raises_thresholds"), [(2.0, True), (60.0, False)])
def test_quadratic_l0_moves_thresholds_toward_target_from_both_sides(target: float, raises_thresholds: bool) -> None:
    """Above the target the θ-gradient is ≤ 0 (descent raises θ, lowering L0); below it, ≥ 0."""
    config = DictionaryConfig(
        d_in=16,
        width=64,
        sparsity="quadratic_l0",
        target_l0=target,
        l0_coefficient=1.0,
        lambda_warmup_steps=0,
        bandwidth=0.05,
        threshold_init=0.02,
    )
    sae = JumpReLU(config, generator=torch.Generator().manual_seed(1))
    x_BD = torch.randn(256, 16, generator=torch.Generator().manual_seed(2)) / 4
    out = sae.loss(x_BD, step=0)
    assert (out.l0.item() > target) == raises_thresholds
    out.sparsity.backward()
    grad_F = sae.threshold_param.grad
    assert grad_F is not None
    assert (grad_F != 0).sum() > 10
    if raises_thresholds:
        assert (grad_F <= 0).all()
    else:
        assert (grad_F >= 0).all()


def test_high_frequency_penalty_value_and_omega_mask() -> None:
    active_BF = _active([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]])
    torch.testing.assert_close(firing_frequency(active_BF), torch.tensor([1.0, 0.25, 0.25, 0.0]))
    omega = 0.2
    full = high_frequency_penalty(active_BF, coefficient=0.1, omega=omega)
    assert full.item() == pytest.approx((0.1 / omega) * (1.0 + 0.0625 + 0.0625))
    only_above = high_frequency_penalty(active_BF, coefficient=0.1, omega=0.5, above_omega_only=True)
    assert only_above.item() == pytest.approx((0.1 / 0.5) * 1.0)
    only_above.backward()
    assert active_BF.grad is not None
    assert active_BF.grad[:, 1:].abs().sum() == 0  # rare latents feel nothing
    assert (active_BF.grad[:, 0] > 0).all()


def test_high_frequency_penalty_raises_thresholds_of_dense_latents_only() -> None:
    config = DictionaryConfig(
        d_in=16,
        width=32,
        l0_coefficient=0.0,
        high_freq_coefficient=1.0,
        high_freq_omega=0.3,
        high_freq_above_omega_only=True,
        lambda_warmup_steps=0,
        bandwidth=0.1,
        threshold_init=0.05,
    )
    sae = JumpReLU(config, generator=torch.Generator().manual_seed(3))
    x_BD = torch.randn(512, 16, generator=torch.Generator().manual_seed(4)) / 4
    out = sae.loss(x_BD, step=0)
    assert out.high_frequency.item() > 0
    out.total.backward()  # recon part included; compare with a run without the penalty
    with_hf = sae.threshold_param.grad
    assert with_hf is not None
    with_hf = with_hf.clone()
    sae.zero_grad()
    sae.loss(x_BD, step=0).reconstruction.backward()
    assert sae.threshold_param.grad is not None
    delta_F = with_hf - sae.threshold_param.grad
    freq_F = (out.output.pre_activations > sae.threshold_F).float().mean(0).detach()
    assert (delta_F[freq_F <= 0.3] == 0).all()
    assert (delta_F[freq_F > 0.3] <= 0).all()
    assert (delta_F < 0).any()


def test_decoder_weighted_l1_penalty() -> None:
    f_BF = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    W_dec_FD = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])  # row norms 5, 2, 1
    value = decoder_weighted_l1_penalty(f_BF, W_dec_FD, coefficient=0.1)
    assert value.item() == pytest.approx(0.1 * ((1 * 5 + 2 * 1) + (3 * 2)) / 2)
