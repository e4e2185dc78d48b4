"""The threshold init: each latent starts where it fires on the first batch at the target rate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from element_fixtures import RES, WIDTH, D, first_batch, jumprelu_spec, sparse_tokens, trainer_for

from saescope.sae import DictionaryConfig, JumpReLU
from saescope.train import SAESpec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("architecture", ["jumprelu", "relu"])
@pytest.mark.parametrize("target", [8.0, 32.0])
def test_data_driven_thresholds_start_within_20_percent_of_the_target_l0(
    tmp_path: Path, target: float, architecture: str
) -> None:
    """JumpReLU: θ at each latent's target-rate quantile; ReLU: b_enc lowered by it (its threshold is 0)."""
    dictionary = DictionaryConfig(d_in=D, width=WIDTH, architecture=architecture, lambda_warmup_steps=0)
    spec = SAESpec("d", RES, dictionary, target_l0=target, decoder_bias_init="mean", threshold_init_from_data=True)
    trainer = trainer_for(spec, tmp_path, sparse_tokens(64, 0))
    x_init = sparse_tokens(4096, seed=1)
    first_batch(trainer, x_init, x_init)
    sae = trainer.members[0].sae
    with torch.no_grad():
        heldout_l0 = float((sae.encode(sparse_tokens(4096, seed=2)) != 0).float().sum(-1).mean())
    assert heldout_l0 == pytest.approx(target, rel=0.2)


def test_without_data_driven_thresholds_every_latent_starts_at_theta_init(tmp_path: Path) -> None:
    trainer = trainer_for(jumprelu_spec(target_l0=8.0, threshold_init_from_data=False), tmp_path, sparse_tokens(64, 0))
    x_init = sparse_tokens(1024, seed=1)
    first_batch(trainer, x_init, x_init)
    sae = trainer.members[0].sae
    assert isinstance(sae, JumpReLU)
    torch.testing.assert_close(sae.threshold_F.detach(), torch.full((WIDTH,), 0.001))
