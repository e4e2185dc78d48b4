"""JumpReLU straight-through estimators and threshold handling (method §1.4, §1.5, §7.10 item 1)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from saescope.sae import DictionaryConfig, JumpReLU, heaviside_step, jumprelu
from saescope.sae.jumprelu import MIN_RAW_THRESHOLD, rectangle

B, D, M = 512, 16, 64
EPS = 0.05  # wider than GS's 0.001 so that many pre-activations fall inside the kernel window


def _random_sae(lam: float, parameterisation: str = "log", seed: int = 0) -> tuple[JumpReLU, torch.Tensor]:
    """An SAE with random biases and thresholds placed at typical pre-activation values."""
    gen = torch.Generator().manual_seed(seed)
    config = DictionaryConfig(
        d_in=D,
        width=M,
        l0_coefficient=lam,
        lambda_warmup_steps=0,
        bandwidth=EPS,
        threshold_parameterisation=parameterisation,
    )
    sae = JumpReLU(config, generator=gen)
    x_BD = torch.randn(B, D, generator=gen) / D**0.5
    with torch.no_grad():
        sae.W_enc_DF.add_(0.3 * torch.randn(D, M, generator=gen))
        sae.b_dec_D.copy_(0.1 * torch.randn(D, generator=gen))
        sae.b_enc_F.copy_(0.05 * torch.randn(M, generator=gen))
        pre_BF = sae.pre_activations(x_BD)
        theta_F = pre_BF.quantile(0.7, dim=0).clamp_min(0.05)  # ~30% of tokens fire per latent
        param = theta_F.log() if parameterisation == "log" else theta_F
        sae.threshold_param.copy_(param)
    return sae, x_BD


def test_rectangle_kernel_is_open_unit_interval() -> None:
    u = torch.tensor([-0.75, -0.5, -0.49, 0.0, 0.49, 0.5, 0.75])
    torch.testing.assert_close(rectangle(u), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]))


def test_threshold_gradient_equals_kernel_density_formula() -> None:
    """method §7.10 item 1: grad(log θ_i) = θ_i/(Bε) Σ_b (2θ_i d_i·(x_b − x̂_b) − λ) K((π_bi − θ_i)/ε)."""
    lam = 0.01
    sae, x_BD = _random_sae(lam)
    out = sae.loss(x_BD, step=0)
    out.total.backward()
    with torch.no_grad():
        theta_F = sae.threshold_F
        pre_BF = out.output.pre_activations
        residual_BD = x_BD - out.output.reconstruction
        window_BF = rectangle((pre_BF - theta_F) / EPS)
        assert window_BF.sum() > 500  # the check is not vacuous
        I_BF = 2 * theta_F * (residual_BD @ sae.W_dec_FD.T)  # I_i(x_b) = 2 θ_i d_i·(x_b − x̂_b)
        expected_F = theta_F / (B * EPS) * ((I_BF - lam) * window_BF).sum(0)
    grad_F = sae.threshold_param.grad
    assert grad_F is not None
    torch.testing.assert_close(grad_F, expected_F, rtol=1e-4, atol=1e-7)


def test_raw_threshold_gradient_is_the_log_gradient_divided_by_theta() -> None:
    lam = 0.01
    log_sae, x_BD = _random_sae(lam, "log")
    raw_sae, _ = _random_sae(lam, "raw")
    torch.testing.assert_close(log_sae.threshold_F, raw_sae.threshold_F)
    log_sae.loss(x_BD).total.backward()
    raw_sae.loss(x_BD).total.backward()
    assert log_sae.threshold_param.grad is not None
    assert raw_sae.threshold_param.grad is not None
    torch.testing.assert_close(
        raw_sae.threshold_param.grad,
        log_sae.threshold_param.grad / log_sae.threshold_F.detach(),
        rtol=1e-4,
        atol=1e-6,
    )


def test_sparsity_term_trains_thresholds_only() -> None:
    """λ > 0 changes the θ-gradient but leaves every other gradient identical (no STE to π)."""
    grads = {}
    for lam in (0.0, 0.05):
        sae, x_BD = _random_sae(lam)
        sae.loss(x_BD, step=0).total.backward()
        grads[lam] = {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}
    assert set(grads[0.0]) == {"W_enc_DF", "b_enc_F", "W_dec_FD", "b_dec_D", "log_threshold_F"}
    for name in ("W_enc_DF", "b_enc_F", "W_dec_FD", "b_dec_D"):
        torch.testing.assert_close(grads[0.0][name], grads[0.05][name], rtol=0, atol=0)
    assert not torch.allclose(grads[0.0]["log_threshold_F"], grads[0.05]["log_threshold_F"])


def test_l0_step_is_applied_to_pre_activations_not_codes() -> None:
    """Tokens just *below* θ (f = 0, π inside the window) must contribute to the L0 θ-gradient.

    Were the step applied to f, those tokens would sit at 0, outside the window around θ > ε/2.
    """
    lam = 0.05
    sae, x_BD = _random_sae(lam)
    out = sae.loss(x_BD, step=0)
    terms = sae.sparsity_terms(out.output, step=0)
    terms.penalty.backward()
    with torch.no_grad():
        theta_F = sae.threshold_F
        u_BF = (out.output.pre_activations - theta_F) / EPS
        below_BF = (u_BF > -0.5) & (u_BF <= 0)
        assert below_BF.sum() > 100
        assert (theta_F > EPS / 2).all()
        expected_F = -theta_F * lam / (B * EPS) * rectangle(u_BF).sum(0)
    assert sae.threshold_param.grad is not None
    torch.testing.assert_close(sae.threshold_param.grad, expected_F, rtol=1e-5, atol=1e-8)
    assert sae.W_enc_DF.grad is None or sae.W_enc_DF.grad.abs().sum() == 0


def test_autograd_functions_match_spec_directly() -> None:
    pre_BF = torch.tensor([[0.5, 1.0, 1.02, 0.99], [2.0, -1.0, 0.97, 1.04]], requires_grad=True)
    theta_F = torch.tensor([1.0, 1.0, 1.0, 1.0], requires_grad=True)
    eps = 0.05
    f_BF = jumprelu(pre_BF, theta_F, eps)
    torch.testing.assert_close(f_BF.detach(), torch.tensor([[0.0, 0.0, 1.02, 0.0], [2.0, 0.0, 0.0, 1.04]]))
    f_BF.sum().backward()
    assert pre_BF.grad is not None
    assert theta_F.grad is not None
    torch.testing.assert_close(pre_BF.grad, (pre_BF > theta_F).float())  # plain derivative, no STE
    # window |π − θ| < ε/2 = 0.025 holds for 1.0, 1.02, 0.99 (token 0) but not for 0.97, 1.04 (token 1)
    in_window = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(theta_F.grad, -(1.0 / eps) * in_window.sum(0))
    pre_BF.grad = None
    theta_F.grad = None
    active_BF = heaviside_step(pre_BF, theta_F, eps)
    assert active_BF.dtype == torch.float32
    (3.0 * active_BF).sum().backward()
    torch.testing.assert_close(pre_BF.grad, torch.zeros_like(pre_BF))
    torch.testing.assert_close(theta_F.grad, -(3.0 / eps) * in_window.sum(0))


def test_threshold_stays_float32_under_dtype_conversion() -> None:
    config = DictionaryConfig(d_in=D, width=M)
    sae = JumpReLU(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.threshold_param.add_(1e-6)  # a change that bf16 cannot represent
    exact_F = sae.threshold_param.detach().clone()
    conversions: list[Callable[[JumpReLU], object]] = [
        lambda m: m.to(torch.bfloat16),
        lambda m: m.half(),
        lambda m: m.bfloat16(),
    ]
    for convert in conversions:
        convert(sae)
        assert sae.threshold_param.dtype == torch.float32
        assert torch.equal(sae.threshold_param.detach(), exact_F)
    assert sae.W_enc_DF.dtype == torch.bfloat16
    assert sae.W_dec_FD.dtype == torch.bfloat16
    out = sae.loss(torch.randn(8, D, dtype=torch.bfloat16), step=20_000)
    out.total.backward()
    assert sae.threshold_param.grad is not None
    assert sae.threshold_param.grad.dtype == torch.float32
    assert out.output.codes.dtype == torch.bfloat16


def test_bfloat16_config_builds_float32_threshold() -> None:
    sae = JumpReLU(DictionaryConfig(d_in=D, width=M, dtype="bfloat16"))
    assert sae.W_enc_DF.dtype == torch.bfloat16
    assert sae.threshold_param.dtype == torch.float32
    assert sae.threshold_F.float().allclose(torch.full((M,), 0.001))


@pytest.mark.parametrize("parameterisation", ["log", "raw"])
def test_threshold_initialisation(parameterisation: str) -> None:
    config = DictionaryConfig(d_in=D, width=M, threshold_parameterisation=parameterisation, threshold_init=0.01)
    sae = JumpReLU(config)
    name = "log_threshold_F" if parameterisation == "log" else "raw_threshold_F"
    assert name in dict(sae.named_parameters())
    torch.testing.assert_close(sae.threshold_F, torch.full((M,), 0.01))


def test_raw_threshold_is_clamped_positive_but_still_receives_gradient() -> None:
    config = DictionaryConfig(
        d_in=D, width=M, threshold_parameterisation="raw", lambda_warmup_steps=0, l0_coefficient=0.1
    )
    sae = JumpReLU(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.threshold_param.fill_(-0.5)
    assert (sae.threshold_F == MIN_RAW_THRESHOLD).all()
    x_BD = torch.zeros(4, D)  # every pre-activation is 0, inside the window around the floor
    sae.loss(x_BD).total.backward()
    assert sae.threshold_param.grad is not None
    assert (sae.threshold_param.grad < 0).all()  # descent raises the stuck threshold
