"""Decoder-bias init: ``b_dec`` starts at the first batch's mean or geometric median of the target.

A site with a large mean (a residual stream's massive-activation dimensions) otherwise spends its first steps
learning the mean through ``b_dec``, while every latent's code carries part of it.
"""

from __future__ import annotations

import torch

from saescope.train.elements.base import Member, RecipeElement
from saescope.train.inits import geometric_median


class DecoderBiasInit(RecipeElement):
    """`SAESpec.decoder_bias_init`, per dictionary: "zeros" (left as built), "mean" or "geometric_median" of each
    block's first target batch (``b_dec`` is the bias of the output). A dictionary started from a parent keeps
    its parent's."""

    @torch.no_grad()
    def on_first_batch(self, member: Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        how = member.spec.decoder_bias_init
        if member.spec.init_from is not None or how == "zeros":
            return
        sae = member.sae
        for block, y_block in zip(sae.layer_blocks(), sae.split_outputs(y_BD), strict=True):
            block.b_dec_D.copy_(y_block.mean(0) if how == "mean" else geometric_median(y_block))
