"""Matryoshka nested-prefix reconstruction loss (method §7.3)."""

from __future__ import annotations

import pytest
import torch

from saescope.sae import DictionaryConfig, build_dictionary
from saescope.sae.matryoshka import matryoshka_prefix_losses, reconstruction_loss

PREFIXES = (4, 12, 32)


def _manual(f_BF: torch.Tensor, W_dec_FD: torch.Tensor, offset: torch.Tensor, y_BD: torch.Tensor) -> float:
    total = 0.0
    for m in PREFIXES:
        y_hat = f_BF[:, :m] @ W_dec_FD[:m] + offset
        total += (y_BD - y_hat).pow(2).sum(-1).mean().item()
    return total


@pytest.mark.parametrize("architecture", ["jumprelu", "topk", "relu"])
def test_sae_matryoshka_loss_equals_manual_sum_over_prefixes(architecture: str) -> None:
    k = 6 if architecture == "topk" else None
    config = DictionaryConfig(
        d_in=8,
        width=32,
        architecture=architecture,
        k=k,
        matryoshka_prefixes=PREFIXES,
        lambda_warmup_steps=0,
        threshold_init=0.01,
    )
    module = build_dictionary(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.b_dec_D.copy_(torch.randn(8, generator=torch.Generator().manual_seed(1)))
    x_BD = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    out = module.loss(x_BD, step=0)
    f_BF = out.output.codes.detach()
    expected = _manual(f_BF, module.W_dec_FD.detach(), module.b_dec_D.detach(), x_BD)
    assert out.reconstruction.item() == pytest.approx(expected, rel=1e-5)
    full = reconstruction_loss(out.output.reconstruction, x_BD).item()
    assert out.reconstruction.item() > full  # the smaller prefixes add to the plain loss
    torch.testing.assert_close(out.total, out.reconstruction + out.sparsity + out.high_frequency)
    plain = build_dictionary(config.replace(matryoshka_prefixes=None), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain.b_dec_D.copy_(module.b_dec_D)
    plain_out = plain.loss(x_BD, step=0)
    torch.testing.assert_close(plain_out.sparsity, out.sparsity)  # penalty counted once


def test_matryoshka_with_skip_transcoder_includes_skip_in_every_prefix() -> None:
    config = DictionaryConfig(
        d_in=10,
        d_out=8,
        width=32,
        apply_pre_encoder_bias=False,
        skip=True,
        matryoshka_prefixes=PREFIXES,
        threshold_init=0.01,
    )
    tc = build_dictionary(config, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        assert tc.W_skip_DD is not None
        tc.W_skip_DD.copy_(torch.randn(10, 8, generator=g))
    x_BD, y_BD = torch.randn(64, 10, generator=g), torch.randn(64, 8, generator=g)
    out = tc.loss(x_BD, y_BD)
    offset = (tc.b_dec_D + x_BD @ tc.W_skip_DD).detach()
    expected = _manual(out.output.codes.detach(), tc.W_dec_FD.detach(), offset, y_BD)
    assert out.reconstruction.item() == pytest.approx(expected, rel=1e-5)


def test_prefix_losses_decrease_with_prefix_size_for_a_perfect_dictionary() -> None:
    W_dec_FD = torch.eye(4)
    f_BF = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    y_BD = f_BF.clone()
    losses = matryoshka_prefix_losses(f_BF, W_dec_FD, torch.zeros(4), y_BD, (1, 2, 4))
    torch.testing.assert_close(losses, torch.tensor([4.0 + 9 + 16, 9.0 + 16, 0.0]))
    with pytest.raises(ValueError, match="increasing"):
        matryoshka_prefix_losses(f_BF, W_dec_FD, torch.zeros(4), y_BD, (2, 2, 4))
