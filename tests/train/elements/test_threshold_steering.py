"""θ steering: every JumpReLU threshold scaled towards the target L0 after each step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from element_fixtures import D, jumprelu_spec, sparse_tokens, trainer_for

from saescope.models.sites import Site, SiteKind
from saescope.sae import CrossLayerDictionary, DictionaryConfig, JumpReLU
from saescope.train import SAESpec
from saescope.train.elements import ThresholdSteering, threshold_steering_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def _counts(l0: float, width: int, n_tokens: int = 100) -> torch.Tensor:
    """Firing counts (width,) of a batch of ``n_tokens`` with mean L0 ``l0``."""
    counts_F = torch.zeros(width, dtype=torch.int64)
    counts_F[0] = round(l0 * n_tokens)
    return counts_F


def test_threshold_controller_scales_theta_towards_the_target_l0(tmp_path: Path) -> None:
    trainer = trainer_for(jumprelu_spec(target_l0=16.0), tmp_path, sparse_tokens(64, 0))
    member = trainer.members[0]
    sae = member.sae
    assert isinstance(sae, JumpReLU)
    steering, width, x_BD = ThresholdSteering(gain=0.5), sae.config.width, sparse_tokens(100, 1)
    theta_F = sae.threshold_F.detach().clone()
    steering.after_step(member, x_BD, _counts(64.0, width))  # 4x the target: θ up by 4 ** 0.5
    torch.testing.assert_close(sae.threshold_F.detach(), 2.0 * theta_F)
    steering.after_step(member, x_BD, _counts(4.0, width))  # a quarter of it: θ down by 2, back to the start
    torch.testing.assert_close(sae.threshold_F.detach(), theta_F)
    steering.after_step(member, x_BD, _counts(16.0 * 100, width))  # clamped at 2x per step
    torch.testing.assert_close(sae.threshold_F.detach(), 2.0 * theta_F)


def test_a_dictionary_without_a_target_l0_is_not_steered(tmp_path: Path) -> None:
    trainer = trainer_for(jumprelu_spec(), tmp_path, sparse_tokens(64, 0))
    member = trainer.members[0]
    before = {key: value.clone() for key, value in member.sae.state_dict().items()}
    ThresholdSteering(gain=0.5).after_step(member, sparse_tokens(100, 1), _counts(64.0, 256))
    assert all(torch.equal(value, before[key]) for key, value in member.sae.state_dict().items())


def test_the_steering_factor_is_the_ratio_to_the_power_of_the_gain_within_a_factor_two() -> None:
    assert threshold_steering_factor(40.0, 10.0, 0.5) == pytest.approx(2.0)
    assert threshold_steering_factor(10.0, 40.0, 0.5) == pytest.approx(0.5)
    assert threshold_steering_factor(1000.0, 10.0, 0.5) == 2.0
    assert threshold_steering_factor(0.0, 10.0, 0.5) == 0.5


def test_threshold_controller_steers_each_block_of_a_clt_to_its_share_of_the_target(tmp_path: Path) -> None:
    layers, width = (0, 1), 32
    arrays = {
        Site(layer, kind): sparse_tokens(64, layer) for layer in layers for kind in (SiteKind.MLP_IN, SiteKind.MLP)
    }
    dictionary = DictionaryConfig(
        d_in=D, width=width, n_layers=2, apply_pre_encoder_bias=False, threshold_parameterisation="raw"
    )
    spec = SAESpec("clt", Site(0, SiteKind.MLP_IN), dictionary, target_l0=16.0, site_out=Site(0, SiteKind.MLP),
                   layers=layers)  # fmt: skip
    trainer = trainer_for(spec, tmp_path, arrays, batch_size=64)
    member = trainer.members[0]
    sae = member.sae
    assert isinstance(sae, CrossLayerDictionary)
    before = [sae.block(i).threshold_F.detach().clone() for i in range(2)]
    # block 0 fires 4x its share (8 per token), block 1 a quarter of it: the total (34) is near the target
    counts_F = torch.cat([_counts(32.0, width), _counts(2.0, width)])
    ThresholdSteering(gain=0.5).after_step(member, torch.zeros(100, 2 * D), counts_F)
    torch.testing.assert_close(sae.block(0).threshold_F.detach(), 2.0 * before[0])
    torch.testing.assert_close(sae.block(1).threshold_F.detach(), 0.5 * before[1])
