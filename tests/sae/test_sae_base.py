"""Shared dictionary behaviour: init, decoder constraint, skip path, loss plumbing (method §2.1, §7.4)."""

from __future__ import annotations

import pytest
import torch

from saescope.sae import DictionaryConfig, JumpReLU, build_dictionary


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sae_init_follows_gemma_scope() -> None:
    sae = build_dictionary(DictionaryConfig(d_in=16, width=48), generator=_gen())
    torch.testing.assert_close(sae.W_dec_FD.norm(dim=-1), torch.ones(48))
    assert torch.equal(sae.W_enc_DF, sae.W_dec_FD.T)  # W_enc = W_decᵀ
    assert sae.W_enc_DF.data_ptr() != sae.W_dec_FD.data_ptr()  # ... but untied
    assert torch.equal(sae.b_enc_F, torch.zeros(48))
    assert torch.equal(sae.b_dec_D, torch.zeros(16))
    assert sae.W_skip_DD is None
    # He-uniform before the row rescale: entries of one row share one scale, so |w| / max|w| is U(0, 1)
    ratios = (sae.W_dec_FD.abs() / sae.W_dec_FD.abs().amax(dim=-1, keepdim=True)).flatten()
    assert 0.45 < ratios.mean().item() < 0.6


def test_init_is_deterministic_given_a_generator() -> None:
    config = DictionaryConfig(d_in=8, width=16)
    a, b, c = (build_dictionary(config, generator=_gen(s)) for s in (1, 1, 2))
    assert torch.equal(a.W_dec_FD, b.W_dec_FD)
    assert not torch.equal(a.W_dec_FD, c.W_dec_FD)


def test_transcoder_init_draws_the_encoder_independently() -> None:
    config = DictionaryConfig(d_in=12, d_out=8, width=32, apply_pre_encoder_bias=False, skip=True)
    tc = build_dictionary(config, generator=_gen())
    assert tc.W_enc_DF.shape == (12, 32)
    assert tc.W_dec_FD.shape == (32, 8)
    assert tc.W_skip_DD is not None
    assert tc.W_skip_DD.shape == (12, 8)
    assert torch.equal(tc.W_skip_DD, torch.zeros(12, 8))
    torch.testing.assert_close(tc.W_enc_DF.norm(dim=0), torch.ones(32))  # unit encoder vectors
    torch.testing.assert_close(tc.W_dec_FD.norm(dim=1), torch.ones(32))
    same_shape = build_dictionary(config.replace(d_out=12), generator=_gen())
    assert not torch.allclose(same_shape.W_enc_DF, same_shape.W_dec_FD.T)


def test_normalize_decoder_gives_unit_rows_and_keeps_directions() -> None:
    sae = build_dictionary(DictionaryConfig(d_in=16, width=32), generator=_gen())
    with torch.no_grad():
        sae.W_dec_FD.mul_(torch.rand(32, 1, generator=_gen(1)) * 5 + 0.1)
    before = sae.W_dec_FD.detach().clone()
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec_FD.norm(dim=-1), torch.ones(32))
    cos = torch.nn.functional.cosine_similarity(before, sae.W_dec_FD.detach(), dim=-1)
    torch.testing.assert_close(cos, torch.ones(32))


def test_project_decoder_grad_removes_parallel_component_only() -> None:
    sae = build_dictionary(DictionaryConfig(d_in=16, width=32), generator=_gen())
    with torch.no_grad():
        sae.W_dec_FD.mul_(3.0)  # the projection must not assume unit rows
    grad_FD = torch.randn(32, 16, generator=_gen(2))
    sae.W_dec_FD.grad = grad_FD.clone()
    sae.project_decoder_grad_()
    projected = sae.W_dec_FD.grad
    assert projected is not None
    dots = (projected * sae.W_dec_FD).sum(-1)
    torch.testing.assert_close(dots, torch.zeros(32), atol=1e-5, rtol=0)
    unit = sae.W_dec_FD / sae.W_dec_FD.norm(dim=-1, keepdim=True)
    expected = grad_FD - (grad_FD * unit).sum(-1, keepdim=True) * unit
    torch.testing.assert_close(projected, expected)
    sae.W_dec_FD.grad = None
    sae.project_decoder_grad_()  # no gradient: a no-op


def test_forward_matches_the_spec_formulas() -> None:
    config = DictionaryConfig(d_in=8, width=16, bandwidth=0.01)
    sae = JumpReLU(config, generator=_gen())
    g = _gen(5)
    with torch.no_grad():
        sae.b_dec_D.copy_(torch.randn(8, generator=g))
        sae.b_enc_F.copy_(torch.randn(16, generator=g) * 0.1)
    x_BD = torch.randn(32, 8, generator=g)
    out = sae(x_BD)
    pre = (x_BD - sae.b_dec_D) @ sae.W_enc_DF + sae.b_enc_F
    f = pre * (pre > sae.threshold_F)
    torch.testing.assert_close(out.pre_activations, pre)
    torch.testing.assert_close(out.codes, f)
    torch.testing.assert_close(out.reconstruction, f @ sae.W_dec_FD + sae.b_dec_D)
    torch.testing.assert_close(sae.encode(x_BD), f)
    torch.testing.assert_close(sae.decode(f), out.reconstruction)


def test_transcoder_has_no_pre_encoder_bias_and_uses_the_skip_path() -> None:
    config = DictionaryConfig(d_in=12, d_out=8, width=16, apply_pre_encoder_bias=False, skip=True)
    tc = build_dictionary(config, generator=_gen())
    g = _gen(3)
    with torch.no_grad():
        tc.b_dec_D.copy_(torch.randn(8, generator=g))
        assert tc.W_skip_DD is not None
        tc.W_skip_DD.copy_(torch.randn(12, 8, generator=g))
    x_BD = torch.randn(5, 12, generator=g)
    y_BD = torch.randn(5, 8, generator=g)
    out = tc(x_BD)
    torch.testing.assert_close(out.pre_activations, x_BD @ tc.W_enc_DF + tc.b_enc_F)
    expected = out.codes @ tc.W_dec_FD + tc.b_dec_D + x_BD @ tc.W_skip_DD
    torch.testing.assert_close(out.reconstruction, expected)
    with pytest.raises(ValueError, match="skip"):
        tc.decode(out.codes)
    with pytest.raises(ValueError, match="y_BD"):
        tc.loss(x_BD)
    loss = tc.loss(x_BD, y_BD, step=10**6)
    torch.testing.assert_close(loss.reconstruction, (y_BD - expected).pow(2).sum(-1).mean())
    loss.total.backward()
    assert tc.W_skip_DD.grad is not None
    assert tc.W_skip_DD.grad.abs().sum() > 0


def test_loss_parts_add_up_and_reconstruction_is_summed_over_dims() -> None:
    config = DictionaryConfig(d_in=8, width=16, l0_coefficient=0.1, lambda_warmup_steps=0)
    sae = build_dictionary(config, generator=_gen())
    x_BD = torch.randn(64, 8, generator=_gen(7))
    out = sae.loss(x_BD, step=3)
    torch.testing.assert_close(out.total, out.reconstruction + out.sparsity + out.high_frequency)
    torch.testing.assert_close(out.reconstruction, (x_BD - out.output.reconstruction).pow(2).sum(-1).mean())
    assert out.l0.item() == pytest.approx((out.output.codes != 0).float().sum(-1).mean().item())
    assert not out.l0.requires_grad
    assert out.sparsity.item() == pytest.approx(0.1 * out.l0.item(), rel=1e-6)
