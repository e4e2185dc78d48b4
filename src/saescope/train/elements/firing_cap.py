"""Firing cap: a JumpReLU latent firing on more than its cap of a batch gets θ raised to fire on exactly the cap.

A hard hold against dense latents, which the L0 penalty alone lets through (it charges every firing alike).
"""

from __future__ import annotations

import torch

from saescope.sae import JumpReLU
from saescope.train.elements.base import Member, RecipeElement, block_slices, target_rate_quantiles


class FiringCap(RecipeElement):
    """`TrainConfig.max_firing_rate` and `firing_cap_mean_multiple`: each step, θ of every JumpReLU latent that
    fired on more than its cap of the batch rises to the batch quantile at which it fires on exactly the cap. The
    cap is ``max_rate``, but never below ``mean_multiple`` times the mean firing rate that the target L0 asks of
    the block (a cap under the mean would make the target unreachable)."""

    def __init__(self, max_rate: float, mean_multiple: float) -> None:
        self.max_rate = max_rate
        self.mean_multiple = mean_multiple

    def cap(self, member: Member, block_width: int, n_blocks: int) -> float:
        """The largest share of a batch that one latent of a block may fire on."""
        target = member.spec.target_l0
        if target is None:
            return self.max_rate
        return min(1.0, max(self.max_rate, self.mean_multiple * target / n_blocks / block_width))

    @torch.no_grad()
    def after_step(self, member: Member, x_BD: torch.Tensor, firing_counts_F: torch.Tensor) -> None:
        n_tokens = x_BD.shape[0]
        parts = block_slices(member, x_BD)
        for block, x_block, latents in parts:
            cap = self.cap(member, block.config.width, len(parts))
            dense_K = (firing_counts_F[latents] > cap * n_tokens).nonzero().flatten()
            if isinstance(block, JumpReLU) and dense_K.numel() > 0:
                quantile_K = target_rate_quantiles(block, x_block, cap, dense_K)
                theta_F = block.threshold_F.detach().clone()
                theta_F[dense_K] = torch.maximum(theta_F[dense_K], quantile_K)
                block.set_threshold_(theta_F)
