"""Revival: JumpReLU latents silent for too long start again at a fraction of the target rate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from element_fixtures import WIDTH, D, first_batch, jumprelu_spec, sparse_tokens, trainer_for

from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig, JumpReLU
from saescope.train import SAESpec
from saescope.train.elements import DeadLatentRevival

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("kind", "how_dead", "fraction"),
    [
        ("sae", "threshold", 1.0),
        ("sae", "threshold", 0.25),
        ("sae", "encoder_bias", 1.0),
        ("transcoder", "threshold", 1.0),
        ("transcoder", "encoder_bias", 0.25),
    ],
)
def test_revival_restarts_silent_latents_at_a_fraction_of_the_target_rate_and_leaves_the_others(
    tmp_path: Path, kind: str, how_dead: str, fraction: float
) -> None:
    """A latent dies by θ rising above its pre-activations, or by b_enc sinking below θ's floor for every
    token: then θ alone cannot bring it back, and a transcoder's b_enc is lifted (an SAE's is not). The revived
    latents fire on `revive_rate_fraction` of the target rate."""
    target = 16.0
    if kind == "sae":
        spec = jumprelu_spec(target_l0=target, decoder_bias_init="mean")
        arrays = {spec.site: sparse_tokens(64, 0)}
    else:
        site_in, site_out = Site(0, SiteKind.MLP_IN), Site(0, SiteKind.MLP)
        dictionary = DictionaryConfig(
            d_in=D, width=WIDTH, d_out=D, apply_pre_encoder_bias=False, threshold_parameterisation="raw"
        )
        spec = SAESpec("tc", site_in, dictionary, target_l0=target, site_out=site_out, decoder_bias_init="mean")
        arrays = {site_in: sparse_tokens(64, 0), site_out: sparse_tokens(64, 0)}
    trainer = trainer_for(spec, tmp_path, arrays)
    member = trainer.members[0]
    sae = member.sae
    assert isinstance(sae, JumpReLU)
    x_init = sparse_tokens(4096, seed=1)
    first_batch(trainer, x_init, x_init)
    dead_K = torch.arange(0, WIDTH, 4)
    theta_F = sae.threshold_F.detach().clone()
    with torch.no_grad():
        if how_dead == "threshold":
            theta_F[dead_K] = 1e6  # far above every pre-activation: these latents can never fire or learn again
            sae.set_threshold_(theta_F)
        else:
            sae.b_enc_F[dead_K] = -1e3  # every pre-activation far below any θ > 0
    member.tokens_since_fired_F[dead_K] = 1024
    member.tokens_since_fired_F[1] = 1023  # silent, but not for long enough
    alive_before_F = sae.threshold_F.detach().clone()
    b_enc_before_F = sae.b_enc_F.detach().clone()

    x_BD = sparse_tokens(4096, seed=2)
    DeadLatentRevival(after_tokens=1024, rate_fraction=fraction).after_step(member, x_BD, torch.zeros(WIDTH))

    if (kind, how_dead) == ("sae", "encoder_bias"):
        torch.testing.assert_close(sae.b_enc_F.detach(), b_enc_before_F, rtol=0, atol=0)
        return
    after_F = sae.threshold_F.detach()
    assert bool((after_F[dead_K] < 1e3).all())
    alive_F = torch.ones(WIDTH, dtype=torch.bool)
    alive_F[dead_K] = False
    torch.testing.assert_close(after_F[alive_F], alive_before_F[alive_F], rtol=0, atol=0)
    torch.testing.assert_close(sae.b_enc_F.detach()[alive_F], b_enc_before_F[alive_F], rtol=0, atol=0)
    if how_dead == "encoder_bias":
        assert bool((sae.b_enc_F.detach()[dead_K] > -1e3 + 1).all())
    assert int(member.tokens_since_fired_F[dead_K].max()) == 0
    with torch.no_grad():
        rate_K = (sae.encode(sparse_tokens(4096, seed=3))[:, dead_K] != 0).float().mean(0)
    assert float(rate_K.mean()) == pytest.approx(fraction * target / WIDTH, rel=0.2)
