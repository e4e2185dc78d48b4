"""The linear-map decoder init: a transcoder's decoder rows along the batch's least-squares map of its encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from element_fixtures import WIDTH, D, first_batch, sparse_tokens, trainer_for

from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig
from saescope.train import SAESpec
from saescope.train.elements import linear_map_decoders

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_map_decoders_follow_the_least_squares_map_and_start_a_transcoder_better(tmp_path: Path) -> None:
    """Targets an exact linear map A of the inputs plus an offset: each init decoder row is its encoder
    direction mapped by A (normalised), and the first reconstruction beats random decoder rows."""
    generator = torch.Generator().manual_seed(3)
    x_ND = sparse_tokens(512, 1)
    A_DE = torch.randn(D, 24, generator=generator) / D**0.5
    y_NE = x_ND @ A_DE + 0.5
    W_enc_DF = torch.randn(D, 64, generator=generator)
    rows_FE = linear_map_decoders(W_enc_DF, x_ND, y_NE)
    torch.testing.assert_close(rows_FE, torch.nn.functional.normalize(W_enc_DF.T @ A_DE, dim=-1), rtol=0, atol=2e-3)

    site_in, site_out = Site(0, SiteKind.MLP_IN), Site(0, SiteKind.MLP)
    dictionary = DictionaryConfig(
        d_in=D, width=WIDTH, d_out=24, apply_pre_encoder_bias=False, threshold_parameterisation="raw"
    )
    spec = SAESpec("t", site_in, dictionary, target_l0=8.0, site_out=site_out, decoder_bias_init="mean")
    fvu = {}
    for linear in (False, True):
        trainer = trainer_for(
            spec, tmp_path / str(linear), {site_in: x_ND, site_out: y_NE}, code_scale_init=True,
            linear_map_decoder_init=linear,
        )  # fmt: skip
        first_batch(trainer, x_ND, y_NE)
        with torch.no_grad():
            y_hat_NE = trainer.members[0].sae(x_ND).reconstruction
        fvu[linear] = float((y_hat_NE - y_NE).square().sum() / (y_NE - y_NE.mean(0)).square().sum())
    assert fvu[False] > 0.95  # random output directions explain (next to) nothing
    assert fvu[True] < 0.8


def test_an_sae_keeps_its_random_decoder(tmp_path: Path) -> None:
    x_ND = sparse_tokens(512, 1)
    dictionary = DictionaryConfig(d_in=D, width=WIDTH, threshold_parameterisation="raw")
    trainer = trainer_for(SAESpec("s", Site(0, SiteKind.RES), dictionary), tmp_path, x_ND, linear_map_decoder_init=True)
    before_FD = trainer.members[0].sae.state_dict()["W_dec_FD"].clone()
    first_batch(trainer, x_ND, x_ND)
    assert torch.equal(trainer.members[0].sae.state_dict()["W_dec_FD"], before_FD)
