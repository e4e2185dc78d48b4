"""Linear-map decoder init: a transcoder's decoder rows start where the batch's linear map sends their encoder rows.

A transcoder's encoder reads one space and its decoder writes another, so random decoder rows are unrelated to
what their latents see, and the first steps go into finding any useful output direction at all (its codes'
least-squares scale starts near zero or negative). Starting each latent on the output that its input direction
linearly maps to gives it a useful write from the first step.
"""

from __future__ import annotations

import torch

from saescope.train.elements.base import Member, RecipeElement


@torch.no_grad()
def linear_map_decoders(W_enc_DF: torch.Tensor, x_BD: torch.Tensor, y_BD: torch.Tensor) -> torch.Tensor:
    """Unit decoder rows (F, d_out) for a transcoder: row i is ``normalize(W_enc[:, i]ᵀ @ M)``, M (d_in, d_out)
    being the ridge least-squares linear map from the centred batch inputs to the centred targets.

    For an SAE M is the identity and this is the tied initialisation.
    """
    x_BD, y_BD = x_BD.double(), y_BD.double()
    xc_BD, yc_BD = x_BD - x_BD.mean(0), y_BD - y_BD.mean(0)
    gram_DD = xc_BD.T @ xc_BD
    ridge = 1e-3 * float(gram_DD.diagonal().mean()) + 1e-12  # keeps the solve defined when batch < d_in
    eye_DD = torch.eye(gram_DD.shape[0], dtype=gram_DD.dtype, device=gram_DD.device)
    map_DE = torch.linalg.solve(gram_DD + ridge * eye_DD, xc_BD.T @ yc_BD)
    rows_FE = W_enc_DF.double().T @ map_DE
    return torch.nn.functional.normalize(rows_FE, dim=-1).to(W_enc_DF.dtype)


class LinearMapDecoderInit(RecipeElement):
    """`TrainConfig.linear_map_decoder_init`: each block of a transcoder (or CLT) starts with
    `linear_map_decoders` of its first batch. SAEs and dictionaries started from a parent are left alone."""

    @torch.no_grad()
    def on_first_batch(self, member: Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        if member.spec.init_from is not None or not member.spec.transcodes:
            return
        sae = member.sae
        for block, x_block, y_block in zip(
            sae.layer_blocks(), sae.split_inputs(x_BD), sae.split_outputs(y_BD), strict=True
        ):
            block.W_dec_FD.copy_(linear_map_decoders(block.W_enc_DF, x_block, y_block))
