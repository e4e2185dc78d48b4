"""Sparsity penalties and their schedules: small pure functions (method §1.3, §7.2).

Shape letters: ``B`` batch of tokens, ``F`` latents (M), ``D`` model width.  ``active_BF`` is the
output of the JumpReLU step estimator (:class:`saescope.sae.jumprelu.StepFunction`): its forward value
is the 0/1 firing indicator ``H(π − θ)`` and its backward sends a pseudo-gradient to θ only, so every
penalty built from it trains thresholds, never the encoder (method §1.4).

Schedules are functions of the step alone, so a resumed run reproduces the same coefficients.
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear_warmup(step: int, warmup_steps: int) -> float:
    """Factor in [0, 1] rising linearly from 0 at step 0 to 1 at ``warmup_steps`` (then constant).

    GS1 warms λ over 10,000 steps, GS2 over 50,000 (method §2.1, §7.2). ``warmup_steps = 0`` means no
    warm-up (factor 1 from step 0).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def warmed_coefficient(coefficient: float, step: int, warmup_steps: int) -> float:
    """``coefficient · linear_warmup(step, warmup_steps)``: λ_t of method §2.4."""
    return coefficient * linear_warmup(step, warmup_steps)


def mean_l0(active_BF: Tensor) -> Tensor:
    """Batch-mean L0 ``L̄0 = (1/B) Σ_b Σ_i active_bi``: scalar, differentiable through the step STE."""
    return active_BF.float().sum(dim=-1).mean()


def l0_penalty(active_BF: Tensor, coefficient: float) -> Tensor:
    """GS1 penalty ``λ · L̄0`` (method §1.3): scalar."""
    return coefficient * mean_l0(active_BF)


def quadratic_l0_penalty(active_BF: Tensor, coefficient: float, target_l0: float, prefactor: float = 2.0) -> Tensor:
    """GS2 target-L0 penalty ``λ · (c / L0*) · (L̄0 − L0*)²`` (method §7.2): scalar.

    ``L̄0`` is the batch mean of the per-token L0 *before* squaring (the dictionary_learning form; GS2
    does not say).  Its gradient w.r.t. L̄0 is ``2λc(L̄0 − L0*)/L0*``: positive above the target (raise
    thresholds), negative below it (lower them).
    """
    return coefficient * (prefactor / target_l0) * (mean_l0(active_BF) - target_l0) ** 2


def firing_frequency(active_BF: Tensor) -> Tensor:
    """Per-latent batch firing frequency ``f̂_i = (1/B) Σ_b active_bi``: shape (F,)."""
    return active_BF.float().mean(dim=0)


def high_frequency_penalty(
    active_BF: Tensor, coefficient: float, omega: float, above_omega_only: bool = False
) -> Tensor:
    """High-frequency penalty ``(λ_freq / ω) · Σ_i f̂_i²`` (method §7.2 recommendation): scalar.

    With ``above_omega_only`` only latents with ``f̂_i > ω`` contribute, so rare latents feel nothing.
    """
    freq_F = firing_frequency(active_BF)
    squared_F = freq_F.square()
    if above_omega_only:
        squared_F = torch.where(freq_F > omega, squared_F, torch.zeros_like(squared_F))
    return (coefficient / omega) * squared_F.sum()


def decoder_weighted_l1_penalty(f_BF: Tensor, W_dec_FD: Tensor, coefficient: float) -> Tensor:
    """ReLU-SAE penalty ``λ · (1/B) Σ_b Σ_i f_bi ‖W_dec,i‖₂``: scalar.

    Weighting by decoder row norms stops the model from shrinking codes while growing decoder rows.
    """
    norms_F = W_dec_FD.float().norm(dim=-1)
    penalty: Tensor = (f_BF.float() * norms_F).sum(dim=-1).mean() * coefficient
    return penalty
