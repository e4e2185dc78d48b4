"""Hand-built JumpReLU dictionaries for the interpretability tests: every latent's encoder column, decoder row and
threshold are chosen by the test."""

from __future__ import annotations

import torch

from saescope.sae import DictionaryConfig, SparseDictionary, build_dictionary


def planted_dictionary(W_enc_DF: torch.Tensor, W_dec_FD: torch.Tensor, threshold: float = 0.5) -> SparseDictionary:
    """A JumpReLU SAE with the given encoder and decoder, zero biases and one threshold for every latent."""
    d_in, width = W_enc_DF.shape
    sae = build_dictionary(DictionaryConfig(d_in=d_in, width=width, threshold_init=threshold))
    with torch.no_grad():
        sae.W_enc_DF.copy_(W_enc_DF)
        sae.W_dec_FD.copy_(W_dec_FD)
        sae.b_enc_F.zero_()
        sae.b_dec_D.zero_()
    return sae
