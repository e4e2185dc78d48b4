"""JumpReLU sparse dictionary and its straight-through estimators (method §1.2–§1.5).

``f = π · H(π − θ)`` with a per-latent threshold θ > 0. Both discontinuities get rectangle-kernel
pseudo-derivatives **with respect to θ only** (method §1.4): the encoder learns from reconstruction alone,
the thresholds learn from reconstruction and sparsity. The L0 step is applied to the pre-activation π,
not to f (method §1.5 pitfall; dictionary_learning issue #55).

Deviations from the paper, both opt-in or harmless:

* ``threshold_parameterisation="raw"`` trains θ directly (SAELens PR #718, dictionary_learning) instead
  of log θ, because Adam moves log θ by ~lr per step and short runs never raise θ (method §8.6). θ is
  clamped at :data:`MIN_RAW_THRESHOLD` in the forward with a straight-through clamp, so a raw value that
  drifts below the floor still gets gradients and can come back.
* θ is kept in float32 whatever the other parameters' dtype (SAELens PR #728: bf16 rounds away the
  small threshold updates).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from saescope.sae.base import ForwardOutput, SparseDictionary, SparsityTerms
from saescope.sae.config import DictionaryConfig
from saescope.sae.penalties import (
    high_frequency_penalty,
    l0_penalty,
    quadratic_l0_penalty,
    warmed_coefficient,
)
from saescope.sae.sparse import SelectionRule

#: Smallest θ the "raw" parameterisation lets through in the forward pass.
MIN_RAW_THRESHOLD = 1e-6


def rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel K(u) = 1 on the open interval (−½, ½), else 0 (method §1.4)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _threshold_grad(pre_BF: Tensor, theta_F: Tensor, bandwidth: float, weight_BF: Tensor) -> Tensor:
    """Σ over leading dims of ``weight · K((π − θ)/ε)``, in float32, shaped like θ."""
    window_BF = rectangle((pre_BF.float() - theta_F) / bandwidth)
    return (weight_BF.float() * window_BF).sum_to_size(theta_F.shape)


class JumpReLUFunction(torch.autograd.Function):
    """``JumpReLU_θ(π) = π·H(π − θ)``. Backward: ∂/∂π = H(π − θ) (no STE term), ∂/∂θ = −(θ/ε)·K((π − θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre_BF: Tensor, theta_F: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre_BF, theta_F)
        ctx.bandwidth = bandwidth
        return pre_BF * (pre_BF > theta_F).to(pre_BF.dtype)

    @staticmethod
    def backward(ctx: Any, grad_f_BF: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        pre_BF, theta_F = ctx.saved_tensors
        bandwidth: float = ctx.bandwidth
        grad_pre_BF = None
        if ctx.needs_input_grad[0]:
            grad_pre_BF = (pre_BF > theta_F).to(grad_f_BF.dtype) * grad_f_BF
        grad_theta_F = None
        if ctx.needs_input_grad[1]:
            weight_BF = -(theta_F / bandwidth) * grad_f_BF.float()
            grad_theta_F = _threshold_grad(pre_BF, theta_F, bandwidth, weight_BF).to(theta_F.dtype)
        return grad_pre_BF, grad_theta_F, None


class StepFunction(torch.autograd.Function):
    """``H(π − θ)`` (float32 0/1). Backward: ∂/∂π = 0, ∂/∂θ = −(1/ε)·K((π − θ)/ε). Feed it π, not f."""

    @staticmethod
    def forward(ctx: Any, pre_BF: Tensor, theta_F: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre_BF, theta_F)
        ctx.bandwidth = bandwidth
        return (pre_BF > theta_F).to(theta_F.dtype)

    @staticmethod
    def backward(ctx: Any, grad_active_BF: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        pre_BF, theta_F = ctx.saved_tensors
        bandwidth: float = ctx.bandwidth
        grad_pre_BF = torch.zeros_like(pre_BF) if ctx.needs_input_grad[0] else None
        grad_theta_F = None
        if ctx.needs_input_grad[1]:
            weight_BF = grad_active_BF.float() * (-1.0 / bandwidth)
            grad_theta_F = _threshold_grad(pre_BF, theta_F, bandwidth, weight_BF).to(theta_F.dtype)
        return grad_pre_BF, grad_theta_F, None


def jumprelu(pre_BF: Tensor, theta_F: Tensor, bandwidth: float) -> Tensor:
    """Typed wrapper of :class:`JumpReLUFunction`: f (B, F)."""
    out: Tensor = JumpReLUFunction.apply(pre_BF, theta_F, bandwidth)  # type: ignore[no-untyped-call]
    return out


def heaviside_step(pre_BF: Tensor, theta_F: Tensor, bandwidth: float) -> Tensor:
    """Typed wrapper of :class:`StepFunction`: the float32 firing indicator (B, F)."""
    out: Tensor = StepFunction.apply(pre_BF, theta_F, bandwidth)  # type: ignore[no-untyped-call]
    return out


class JumpReLU(SparseDictionary):
    """The Gemma Scope JumpReLU dictionary (SAE, transcoder or skip transcoder per ``config``).

    The trainable threshold parameter is ``log_threshold_F`` (log θ, the paper) or ``raw_threshold_F``
    (θ itself, clamped positive) depending on ``config.threshold_parameterisation``; use
    :attr:`threshold_F` for θ. It stays float32 through ``.to(dtype)`` / ``.half()`` / ``.bfloat16()``.
    """

    def __init__(self, config: DictionaryConfig, *, generator: torch.Generator | None = None) -> None:
        if config.architecture != "jumprelu":
            raise ValueError(f"JumpReLU needs config.architecture='jumprelu'; got {config.architecture!r}")
        super().__init__(config, generator=generator)
        self._threshold_name = "log_threshold_F" if config.threshold_parameterisation == "log" else "raw_threshold_F"
        theta_F = torch.full((config.width,), config.threshold_init, dtype=torch.float32)
        self.register_parameter(self._threshold_name, nn.Parameter(self._to_param(theta_F)))

    def _to_param(self, theta_F: Tensor) -> Tensor:
        return theta_F.log() if self.config.threshold_parameterisation == "log" else theta_F

    @property
    def threshold_param(self) -> nn.Parameter:
        """The trainable threshold parameter (log θ or raw θ), float32, shape (F,)."""
        param = self._parameters[self._threshold_name]
        assert param is not None
        return param

    @property
    def threshold_F(self) -> Tensor:
        """θ (F,), float32, differentiable w.r.t. :attr:`threshold_param`."""
        param = self.threshold_param
        if self.config.threshold_parameterisation == "log":
            return param.exp()
        # straight-through clamp: forward value max(raw, floor), gradient 1 everywhere
        return param.detach().clamp_min(MIN_RAW_THRESHOLD) + (param - param.detach())

    def activation(self, pre_BF: Tensor) -> Tensor:
        return jumprelu(pre_BF, self.threshold_F, self.config.bandwidth)

    def sparsity_terms(self, output: ForwardOutput, step: int, coefficient_scale: float = 1.0) -> SparsityTerms:
        active_BF = heaviside_step(output.pre_activations, self.threshold_F, self.config.bandwidth)  # Step on π
        return self._step_penalties(active_BF, step, coefficient_scale)

    def frequency_sparsity_terms(
        self, frequency_1F: Tensor, step: int, coefficient_scale: float = 1.0
    ) -> SparsityTerms:
        # The penalties are linear in batch means of the firing indicators, so f̂ (1, F) stands for them.
        return self._step_penalties(frequency_1F, step, coefficient_scale)

    def sparse_selection_rule(self) -> SelectionRule:
        return SelectionRule("jumprelu", threshold_F=self.threshold_F, bandwidth=self.config.bandwidth)

    def _step_penalties(self, active_BF: Tensor, step: int, coefficient_scale: float) -> SparsityTerms:
        """Penalties of method §1.3/§7.2 from firing indicators (B, F) or firing frequencies (1, F)."""
        c = self.config
        coefficient = warmed_coefficient(c.l0_coefficient, step, c.lambda_warmup_steps) * coefficient_scale
        if c.sparsity == "quadratic_l0":
            assert c.target_l0 is not None
            penalty = quadratic_l0_penalty(active_BF, coefficient, c.target_l0, c.quadratic_prefactor)
        else:
            penalty = l0_penalty(active_BF, coefficient)
        if c.high_freq_coefficient > 0:
            hf_coefficient = warmed_coefficient(c.high_freq_coefficient, step, c.lambda_warmup_steps)
            high_freq = high_frequency_penalty(
                active_BF, hf_coefficient, c.high_freq_omega, c.high_freq_above_omega_only
            )
        else:
            high_freq = penalty.new_zeros(())
        return SparsityTerms(penalty, high_freq, coefficient)

    @torch.no_grad()
    def set_threshold_(self, theta_F: Tensor) -> None:
        """Overwrite θ (F,) in place (e.g. the trainer's data-driven initialisation); values must be > 0."""
        if theta_F.shape != (self.config.width,) or not bool((theta_F > 0).all()):
            raise ValueError(f"thresholds must be {self.config.width} positive values")
        self.threshold_param.copy_(self._to_param(theta_F.to(device=self.threshold_param.device, dtype=torch.float32)))

    per_latent_code_scaling = True

    @torch.no_grad()
    def scale_thresholds_(self, scale: float | Tensor) -> None:
        theta_F = self.threshold_F.double() * scale
        self.threshold_param.copy_(self._to_param(theta_F))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> JumpReLU:
        # Keep θ float32 through dtype conversions; device moves still apply to it.
        exact_F = self.threshold_param.detach().clone()
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        param = self.threshold_param
        if param.dtype != torch.float32:
            param.data = exact_F.to(device=param.device)
            if param.grad is not None:
                param.grad = param.grad.float()
        return self
