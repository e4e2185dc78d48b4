"""Data-driven starting points of a dictionary's weights that recipes name (``decoder_bias_init``)."""

from __future__ import annotations

import torch

#: Values of the ``decoder_bias_init`` setting: b_dec at zero (the papers'), or the first batch's mean or
#: geometric median.
DECODER_BIAS_INITS = ("zeros", "mean", "geometric_median")


def geometric_median(x_ND: torch.Tensor, *, iterations: int = 50, tolerance: float = 1e-7) -> torch.Tensor:
    """The point minimising Σ_n ‖x_n − m‖ (Weiszfeld's iteration, in float64), shape (D,).

    A starting b_dec that, unlike the mean, is not dragged by a few outlier tokens.
    """
    x = x_ND.double()
    median_D = x.mean(0)
    for _ in range(iterations):
        weights_N = 1.0 / (x - median_D).norm(dim=-1).clamp_min(1e-12)
        updated_D = (weights_N[:, None] * x).sum(0) / weights_N.sum()
        moved = float((updated_D - median_D).norm())
        median_D = updated_D
        if moved <= tolerance * float(median_D.norm().clamp_min(1e-12)):
            break
    return median_D.to(x_ND.dtype)
