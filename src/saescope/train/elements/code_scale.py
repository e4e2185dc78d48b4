"""Code-scale init: after the other data-driven inits, every code scaled by its least-squares factor.

A fresh dictionary whose thresholds sit at the target-rate quantiles fires the right latents, but its codes (raw
projections on random directions) add up to several times the target, so its first steps go into shrinking codes
(driving L0 far below its target) instead of learning directions. Scaling the codes starts training at the best
reconstruction those directions allow.
"""

from __future__ import annotations

import math

import torch

from saescope.sae import AnyDictionary
from saescope.train.elements.base import Member, RecipeElement

#: The smallest initial code scale (`least_squares_code_scale`).
MIN_CODE_SCALE = 1e-3


@torch.no_grad()
def least_squares_code_scale(sae: AnyDictionary, x_BD: torch.Tensor, y_BD: torch.Tensor) -> float:
    """The factor s > 0 minimising ‖y − ŷ₀ − s·(ŷ − ŷ₀)‖² on a batch, ŷ₀ being the output with every code zero
    (1 when no latent fires; `MIN_CODE_SCALE` when the codes do not correlate with the target)."""
    output = sae(x_BD)
    base_BD = sae.decode(torch.zeros_like(output.codes), x_BD)
    coded_BD = (output.reconstruction - base_BD).double()
    target_BD = (y_BD.to(base_BD.dtype) - base_BD).double()
    energy = float(coded_BD.square().sum())
    if not energy > 0:  # no latent fires: nothing to scale
        return 1.0
    scale = float((coded_BD * target_BD).sum()) / energy
    # codes uncorrelated with the target (s ≤ 0: the best s ≥ 0 is 0) start tiny, not at their random size
    return max(scale, MIN_CODE_SCALE) if math.isfinite(scale) else 1.0


class CodeScaleInit(RecipeElement):
    """`TrainConfig.code_scale_init`: every block's codes scaled by `least_squares_code_scale` of the whole
    dictionary on its first batch. A dictionary started from a parent is left alone."""

    @torch.no_grad()
    def on_first_batch(self, member: Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        if member.spec.init_from is not None:
            return
        scale = least_squares_code_scale(member.sae, x_BD, y_BD)
        for block in member.sae.layer_blocks():
            block.scale_codes_(scale)
