"""Folding the normalisation scale and pre-encoder bias into raw-space weights (method §2.7, §7.10 item 2)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from saescope.sae import DictionaryConfig, JumpReLU, SparseDictionary, build_dictionary

B = 256


def _randomised(config: DictionaryConfig, seed: int = 0) -> SparseDictionary:
    g = torch.Generator().manual_seed(seed)
    module = build_dictionary(config, generator=g)
    with torch.no_grad():
        module.W_enc_DF.add_(0.2 * torch.randn(module.W_enc_DF.shape, generator=g))
        module.b_enc_F.copy_(0.1 * torch.randn(config.width, generator=g))
        module.b_dec_D.copy_(0.3 * torch.randn(config.d_target, generator=g))
        if module.W_skip_DD is not None:
            module.W_skip_DD.copy_(0.2 * torch.randn(module.W_skip_DD.shape, generator=g))
        if isinstance(module, JumpReLU):
            theta_F = 0.02 + 0.1 * torch.rand(config.width, generator=g)
            param = theta_F.log() if config.threshold_parameterisation == "log" else theta_F
            module.threshold_param.copy_(param)
    return module


def _check_fold(module: SparseDictionary, scale_in: float, scale_out: float, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    x_raw_BD = scale_in * torch.randn(B, module.config.d_in, generator=g) / module.config.d_in**0.5
    W_dec_before = module.W_dec_FD.detach().clone()
    train = module(x_raw_BD / scale_in)  # training space: x = x_raw / C_in, ŷ = y_raw / C_out
    folded = module.fold_normalisation(scale_in, scale_out)
    raw = folded(x_raw_BD)
    assert folded is not module
    assert not folded.config.apply_pre_encoder_bias
    assert (train.codes != 0).sum() > B  # non-trivial codes
    assert torch.equal((raw.codes != 0), (train.codes != 0))
    tol_f = 1e-5 * scale_out * train.codes.abs().max().item()
    torch.testing.assert_close(raw.codes, scale_out * train.codes, rtol=1e-5, atol=tol_f)
    tol_y = 1e-5 * scale_out * train.reconstruction.abs().max().item()
    torch.testing.assert_close(raw.reconstruction, scale_out * train.reconstruction, rtol=1e-5, atol=tol_y)
    assert torch.equal(folded.W_dec_FD, W_dec_before)  # unchanged, so still unit norm
    torch.testing.assert_close(folded.W_dec_FD.norm(dim=-1), torch.ones(module.config.width))
    assert torch.equal(module.W_dec_FD, W_dec_before)  # the original is untouched


@pytest.mark.parametrize("parameterisation", ["log", "raw"])
def test_fold_sae_matches_spec_2_7(parameterisation: str) -> None:
    """C_in = C_out = C: b_enc' = C(b_enc − b_dec W_enc), b_dec' = C b_dec, θ' = C θ, W unchanged."""
    config = DictionaryConfig(d_in=16, width=64, threshold_parameterisation=parameterisation)
    sae = _randomised(config)
    C = 37.3
    folded = sae.fold_normalisation(C)
    _check_fold(sae, C, C)
    assert isinstance(sae, JumpReLU)
    assert isinstance(folded, JumpReLU)
    torch.testing.assert_close(folded.W_enc_DF, sae.W_enc_DF)
    torch.testing.assert_close(folded.b_enc_F, C * (sae.b_enc_F - sae.b_dec_D @ sae.W_enc_DF))
    torch.testing.assert_close(folded.b_dec_D, C * sae.b_dec_D)
    torch.testing.assert_close(folded.threshold_F, C * sae.threshold_F)


@pytest.mark.parametrize(
    ("extra", "scale_in", "scale_out"),
    [
        ({}, 3.0, 11.0),  # SAE with different scales
        ({"d_out": 12, "apply_pre_encoder_bias": False}, 25.3, 0.7),  # transcoder
        ({"d_out": 12, "apply_pre_encoder_bias": False, "skip": True}, 25.3, 0.7),  # skip transcoder
        ({"skip": True, "apply_pre_encoder_bias": False}, 0.2, 5.0),
    ],
)
def test_fold_with_different_input_and_output_scales(extra: dict[str, Any], scale_in: float, scale_out: float) -> None:
    """Convention: codes scale by C_out, W_enc and W_skip by C_out/C_in, biases and θ by C_out."""
    config = DictionaryConfig(d_in=16, width=64, **extra)
    module = _randomised(config)
    _check_fold(module, scale_in, scale_out)
    folded = module.fold_normalisation(scale_in, scale_out)
    torch.testing.assert_close(folded.W_enc_DF, (scale_out / scale_in) * module.W_enc_DF)
    if module.W_skip_DD is not None:
        assert folded.W_skip_DD is not None
        torch.testing.assert_close(folded.W_skip_DD, (scale_out / scale_in) * module.W_skip_DD)


@pytest.mark.parametrize(
    "config",
    [
        DictionaryConfig(d_in=16, width=64, architecture="relu"),
        DictionaryConfig(d_in=16, width=64, architecture="topk", k=8),
        DictionaryConfig(d_in=16, width=64, architecture="batchtopk", k=8),
    ],
    ids=["relu", "topk", "batchtopk"],
)
def test_fold_other_architectures(config: DictionaryConfig) -> None:
    module = _randomised(config)
    if config.architecture == "batchtopk":
        module.train()
        module(torch.randn(B, 16, generator=torch.Generator().manual_seed(9)) / 4)  # sets the threshold
        module.eval()
    _check_fold(module, 13.0, 13.0)
    _check_fold(module, 2.0, 9.0)


def test_fold_rejects_bad_scales() -> None:
    sae = _randomised(DictionaryConfig(d_in=8, width=16))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="scale_in"):
            sae.fold_normalisation(bad)
        with pytest.raises(ValueError, match="scale_out"):
            sae.fold_normalisation(1.0, bad)


def _gain(d: int, seed: int) -> torch.Tensor:
    return 0.05 + 3.0 * torch.rand(d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "config",
    [
        DictionaryConfig(d_in=16, width=64),  # SAE: pre-encoder bias on, one site, one gain
        DictionaryConfig(d_in=16, width=64, threshold_parameterisation="log"),
        DictionaryConfig(d_in=16, width=64, d_out=12, apply_pre_encoder_bias=False, skip=True),
        DictionaryConfig(d_in=16, width=64, architecture="relu"),
        DictionaryConfig(d_in=16, width=64, architecture="topk", k=8),
        DictionaryConfig(d_in=16, width=64, architecture="batchtopk", k=8),
    ],
    ids=["sae", "sae-log-theta", "skip-transcoder", "relu", "topk", "batchtopk"],
)
def test_absorbed_dimension_gains_give_the_same_map_on_unweighted_activations(config: DictionaryConfig) -> None:
    """new(x) = g_out ⊙ old(x / g_in); per-latent-scalable architectures get unit decoder rows back."""
    module = _randomised(config)
    if config.architecture == "batchtopk":
        module.train()
        module(torch.randn(B, 16, generator=torch.Generator().manual_seed(9)) / 4)  # sets the threshold
    module.eval()
    g_in = _gain(config.d_in, 3)
    g_out = g_in if config.apply_pre_encoder_bias else _gain(config.d_target, 4)
    x_BD = torch.randn(B, config.d_in, generator=torch.Generator().manual_seed(5)) * g_in / 4
    with torch.no_grad():
        before = module(x_BD / g_in)
        absorbed = copy.deepcopy(module)
        absorbed.absorb_dimension_gains_(g_in, g_out)
        after = absorbed(x_BD)
    assert (before.codes != 0).sum() > B  # non-trivial codes
    assert torch.equal(before.codes != 0, after.codes != 0)
    scale = before.reconstruction.abs().max().item() * g_out.max().item()
    torch.testing.assert_close(after.reconstruction, before.reconstruction * g_out, rtol=1e-4, atol=1e-5 * scale)
    rows_F = absorbed.W_dec_FD.norm(dim=-1)
    if absorbed.per_latent_code_scaling:
        torch.testing.assert_close(rows_F, torch.ones_like(rows_F))
    else:
        torch.testing.assert_close(absorbed.W_dec_FD, module.W_dec_FD * g_out)
    with torch.no_grad():  # absorbing 1/g undoes it
        absorbed.absorb_dimension_gains_(1.0 / g_in, 1.0 / g_out)
        again = absorbed(x_BD / g_in)
    torch.testing.assert_close(again.reconstruction, before.reconstruction, rtol=1e-4, atol=1e-5 * scale)


def test_absorbing_different_gains_folds_the_pre_encoder_bias() -> None:
    sae = _randomised(DictionaryConfig(d_in=16, width=64))
    x_BD = torch.randn(B, 16, generator=torch.Generator().manual_seed(5))
    g_in, g_out = _gain(16, 3), _gain(16, 4)
    with torch.no_grad():
        before = sae(x_BD / g_in).reconstruction * g_out
        sae.absorb_dimension_gains_(g_in, g_out)
        after = sae(x_BD).reconstruction
    assert not sae.config.apply_pre_encoder_bias
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_absorb_dimension_gains_rejects_bad_gains() -> None:
    sae = _randomised(DictionaryConfig(d_in=8, width=16))
    for bad in (torch.ones(7), torch.zeros(8), torch.full((8,), float("nan"))):
        with pytest.raises(ValueError, match="gain_in_D"):
            sae.absorb_dimension_gains_(bad, torch.ones(8))
    topk = _randomised(DictionaryConfig(d_in=8, width=16, architecture="topk", k=2))
    with pytest.raises(ValueError, match="one common factor"):
        topk.scale_codes_(torch.ones(16))
