"""A skip transcoder trained on linear data: its skip path is the least-squares fit (fast, single-threaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saescope.data.arrays import ArrayActivations
from saescope.dictionaries.folder import read_trained_sae
from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig, JumpReLU
from saescope.train import SAESpec, TrainConfig, Trainer

D_IN, D_OUT, WIDTH = 16, 12, 16
MLP_IN, MLP = Site(0, SiteKind.MLP_IN), Site(0, SiteKind.MLP)


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = x @ A + c + noise with anisotropic x off the origin, so both W_skip and the intercept matter.

    Returns x (n, D_IN), y (n, D_OUT) and the noiseless target x @ A + c."""
    fixed = torch.Generator().manual_seed(0)
    A_DO = torch.randn(D_IN, D_OUT, generator=fixed) * 3.0 / D_IN**0.5
    c_O = torch.randn(D_OUT, generator=fixed) * 2.0
    mean_D = torch.randn(D_IN, generator=fixed) * 0.3
    generator = torch.Generator().manual_seed(seed)
    x_ND = torch.randn(n, D_IN, generator=generator) * torch.linspace(0.5, 2.0, D_IN) + mean_D
    clean_NO = x_ND @ A_DO + c_O
    return x_ND, clean_NO + 0.5 * torch.randn(n, D_OUT, generator=generator), clean_NO


def rms_distance(a_NO: torch.Tensor, b_NO: torch.Tensor) -> float:
    return float((a_NO.double() - b_NO.double()).square().sum(-1).mean().sqrt())


def test_a_skip_transcoder_with_its_latents_off_is_the_least_squares_linear_fit(tmp_path: Path) -> None:
    x_ND, y_NO, _ = linear_data(2048, seed=1)
    # The target is linear plus noise independent of x: latents can only fit noise on a few tokens, which a
    # strong L0 penalty makes not worth it, so the affine skip path has to carry the whole map.
    dictionary = DictionaryConfig(
        d_in=D_IN, d_out=D_OUT, width=WIDTH, apply_pre_encoder_bias=False, skip=True,
        threshold_parameterisation="raw", lambda_warmup_steps=0, l0_coefficient=1.0,
    )  # fmt: skip
    spec = SAESpec("skip", MLP_IN, dictionary, site_out=MLP, lr=0.1, decoder_bias_init="mean")
    # 200 steps of 256 tokens = 25 epochs; the rate falls linearly to 0 over the last 80% so Adam settles.
    config = TrainConfig(
        total_tokens=200 * 256, batch_size=256, lr_warmup_steps=10, lr_decay_fraction=0.8,
        checkpoint_every_steps=10**6, progress=False,
    )  # fmt: skip
    (trained,) = Trainer([spec], ArrayActivations({MLP_IN: x_ND, MLP: y_NO}), config, tmp_path).run()
    assert trained.norm_scale > 2.0  # the normalisation is not a no-op here

    # Raw space: the folder as written, with the scale C folded in (input x / C, target y / C in training).
    raw = read_trained_sae(trained.folder).raw_space()
    assert isinstance(raw, JumpReLU)
    x_test, _, clean_test = linear_data(4096, seed=2)
    with torch.no_grad():
        assert float((raw.encode(x_test) != 0).float().sum(-1).mean()) < 0.1  # the penalty switched latents off
        skip_only = raw.decode(torch.zeros(len(x_test), WIDTH), x_test)  # x @ W_skip + b_dec
        raw.set_threshold_(torch.full((WIDTH,), 1e30))  # the other way to switch every latent off
        torch.testing.assert_close(raw(x_test).reconstruction, skip_only, rtol=0, atol=0)

    # The closed-form least-squares fit, with intercept, on the same training tokens.
    ones = torch.ones(len(x_ND), 1)
    coefficients = torch.linalg.lstsq(torch.cat([x_ND, ones], 1).double(), y_NO.double()).solution
    least_squares = torch.cat([x_test, torch.ones(len(x_test), 1)], 1).double() @ coefficients

    # Tolerance: the fit on 2048 noisy tokens misses the true map by its sampling error (~1% of the spread of
    # the predictions here). A trainer that found *the least-squares fit of its own data*, not merely
    # something near the truth, is much closer to that fit than the fit is to the truth: the runs we measured
    # (4 data seeds) land at 0.11-0.12 of that distance, so 0.5 leaves a 4x margin. A skip path that is off by a
    # normalisation factor or misses b_dec is off by the whole spread, ~100x the sampling error.
    sampling_error = rms_distance(least_squares, clean_test)
    spread = rms_distance(least_squares, least_squares.mean(0))
    assert 0.002 * spread < sampling_error < 0.05 * spread  # the yardstick is neither zero nor huge
    assert rms_distance(skip_only, least_squares) < 0.5 * sampling_error
