"""Reconstruction losses, including the Matryoshka nested-prefix loss (method §1.3, §7.3).

Shape letters: ``B`` batch, ``F`` latents, ``D`` target width.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor


def reconstruction_loss(y_hat_BD: Tensor, y_BD: Tensor) -> Tensor:
    """Squared error summed over dimensions, averaged over tokens (method §1.3): scalar, float32."""
    return (y_BD.float() - y_hat_BD.float()).square().sum(dim=-1).mean()


def matryoshka_prefix_losses(
    f_BF: Tensor, W_dec_FD: Tensor, offset_BD: Tensor, y_BD: Tensor, prefixes: Sequence[int]
) -> Tensor:
    """Reconstruction loss of each nested prefix of latents: shape (K,) for K prefixes.

    Prefix k reconstructs ``y`` from its first ``m_k`` latents only:
    ``ŷ_k = f[:, :m_k] @ W_dec[:m_k] + offset`` where ``offset`` holds everything that does not depend on
    the latents (``b_dec``, plus ``x @ W_skip`` for skip transcoders; anything broadcastable to (B, D)).
    Partial reconstructions are accumulated chunk by chunk, so the cost is one full decode.
    """
    if not prefixes or any(b <= a for a, b in itertools.pairwise(prefixes)):
        raise ValueError(f"prefixes must be a non-empty strictly increasing sequence; got {prefixes}")
    if prefixes[-1] > f_BF.shape[-1]:
        raise ValueError(f"last prefix {prefixes[-1]} exceeds the number of latents {f_BF.shape[-1]}")
    y_hat_BD = offset_BD.expand(y_BD.shape).to(W_dec_FD.dtype)
    losses: list[Tensor] = []
    start = 0
    for stop in prefixes:
        y_hat_BD = y_hat_BD + f_BF[:, start:stop] @ W_dec_FD[start:stop]
        losses.append(reconstruction_loss(y_hat_BD, y_BD))
        start = stop
    return torch.stack(losses)


def matryoshka_reconstruction_loss(
    f_BF: Tensor, W_dec_FD: Tensor, offset_BD: Tensor, y_BD: Tensor, prefixes: Sequence[int]
) -> Tensor:
    """Matryoshka loss ``Σ_k mean_b ‖y − ŷ_k‖²`` over nested prefixes (method §7.3): scalar.

    Every prefix has weight 1 (GS2 gives no weights); the sparsity penalty is added once by the caller.
    """
    return matryoshka_prefix_losses(f_BF, W_dec_FD, offset_BD, y_BD, prefixes).sum()
