"""θ steering: after each step, every JumpReLU threshold scaled by how far the step's L0 is from its target.

The λ controller reaches θ only through θ's gradient, which Adam normalises and which exists only inside the
kernel window, so λ steers L0 slowly and late: in a run of a few hundred steps L0 then swings far from its
target. A common factor on θ moves L0 at once and keeps the latents' relative thresholds, which θ's own
straight-through gradient keeps learning.
"""

from __future__ import annotations

import torch

from saescope.sae import JumpReLU
from saescope.train.elements.base import Member, RecipeElement


def threshold_steering_factor(l0: float, target_l0: float, gain: float) -> float:
    """What θ is multiplied by after a step with this L0: ``(L0 / target) ** gain``, within [½, 2]."""
    return float(min(2.0, max(0.5, (max(l0, 1e-3) / target_l0) ** gain)))


class ThresholdSteering(RecipeElement):
    """`TrainConfig.threshold_controller_gain`: θ up when the dictionary fires too often, down when too rarely.
    A multi-layer dictionary steers each block by its own L0 against an equal share of the target, so that no
    layer takes the others' share. Dictionaries without a target L0 are left alone."""

    def __init__(self, gain: float) -> None:
        self.gain = gain

    @torch.no_grad()
    def after_step(self, member: Member, x_BD: torch.Tensor, firing_counts_F: torch.Tensor) -> None:
        target = member.spec.target_l0
        if target is None:
            return
        blocks = member.sae.layer_blocks()
        block_l0s = firing_counts_F.reshape(len(blocks), -1).sum(dim=1).double() / x_BD.shape[0]
        for block, l0 in zip(blocks, block_l0s.tolist(), strict=True):
            if isinstance(block, JumpReLU):
                block.scale_thresholds_(threshold_steering_factor(l0, target / len(blocks), self.gain))
