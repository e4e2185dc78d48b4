"""Threshold init: each latent starts where it fires on the first batch at the rate its target L0 asks for.

With the papers' small fixed θ a fresh dictionary fires on most tokens and its first steps go into shutting
latents off; starting each θ at its target-rate quantile starts the run near its target L0.
"""

from __future__ import annotations

import torch

from saescope.sae import JumpReLU
from saescope.train.elements.base import Member, RecipeElement, block_slices, target_rate, target_rate_quantiles


class ThresholdInit(RecipeElement):
    """`SAESpec.threshold_init_from_data`, per dictionary: a JumpReLU block's θ at each latent's quantile of its
    first-batch pre-activations that fires on target L0 / total width of the tokens (never below the θ floor,
    ``threshold_init``); a ReLU's threshold is 0, so its ``b_enc`` moves down by that quantile instead."""

    @torch.no_grad()
    def on_first_batch(self, member: Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        if member.spec.init_from is not None or not member.spec.init_thresholds_from_data:
            return
        rate = target_rate(member)
        for block, x_block, _ in block_slices(member, x_BD):
            quantile_F = target_rate_quantiles(block, x_block, rate)
            if isinstance(block, JumpReLU):
                block.set_threshold_(quantile_F.clamp_min(block.config.threshold_init))
            else:
                block.b_enc_F.sub_(quantile_F.to(block.b_enc_F.dtype))
