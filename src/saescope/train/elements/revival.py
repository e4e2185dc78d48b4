"""Revival: a JumpReLU latent silent for too long gets θ back where it fires on this batch at a low rate.

A latent whose θ rose above all its pre-activations gets no gradient at all (θ only learns inside the kernel
window, the encoder only where the latent fires), so without a new start it stays dead. θ alone cannot revive a
transcoder latent whose ``b_enc`` has sunk below every pre-activation it could reach (how transcoder latents die
when their skip path learns the linear part of the map), so a transcoder's ``b_enc`` is lifted too; an SAE's is
not, as the lift destabilises short SAE runs. A latent died because the dictionary had no use for its
direction, so it comes back at a fraction of the target rate rather than on tokens it reconstructs badly.
"""

from __future__ import annotations

import torch

from saescope.sae import JumpReLU
from saescope.train.elements.base import Member, RecipeElement, block_slices, target_rate_quantiles


class DeadLatentRevival(RecipeElement):
    """`TrainConfig.revive_dead_after_tokens` and `revive_rate_fraction`: every JumpReLU latent that has not fired
    in ``after_tokens`` tokens gets θ at the quantile of this batch where it fires on ``rate_fraction`` of the
    target rate and, for a transcoder or CLT whose quantile lies below the θ floor (``threshold_init``), b_enc
    raised by the difference, so that the latent fires at that rate with θ at the floor. Its silence counter
    starts again. Dictionaries without a target L0 are left alone."""

    def __init__(self, after_tokens: int, rate_fraction: float) -> None:
        self.after_tokens = after_tokens
        self.rate_fraction = rate_fraction

    @torch.no_grad()
    def after_step(self, member: Member, x_BD: torch.Tensor, firing_counts_F: torch.Tensor) -> None:
        target, dead_F = member.spec.target_l0, member.tokens_since_fired_F >= self.after_tokens
        if target is None or not bool(dead_F.any()):
            return
        rate = self.rate_fraction * target / member.spec.dictionary.total_width
        for block, x_block, latents in block_slices(member, x_BD):
            dead_K = dead_F[latents].nonzero().flatten()
            if isinstance(block, JumpReLU) and dead_K.numel() > 0:
                floor = block.config.threshold_init
                quantile_K = target_rate_quantiles(block, x_block, rate, dead_K)
                if member.spec.transcodes:
                    block.b_enc_F[dead_K] += (floor - quantile_K).clamp_min(0.0).to(block.b_enc_F.dtype)
                theta_F = block.threshold_F.detach().clone()
                theta_F[dead_K] = quantile_K.clamp_min(floor)
                block.set_threshold_(theta_F)
                member.tokens_since_fired_F[latents.start + dead_K] = 0
