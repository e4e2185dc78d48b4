"""Dimension gains: per-site gains from the first batch, applied to every batch, absorbed into the saved dictionary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from element_fixtures import ONE_BATCH, RES, WIDTH, D, element_of, jumprelu_spec, outlier_tokens

from saescope.data.arrays import ArrayActivations
from saescope.dictionaries.folder import read_trained_sae
from saescope.train import TrainConfig, Trainer
from saescope.train.elements import DimensionGains, dimension_gains
from saescope.train.recipes import SAESCOPE
from saescope.train.specs import recipe_train_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dimension_gains_keep_the_mean_squared_norm_and_equalise_dimensions_at_power_one() -> None:
    x_ND = outlier_tokens(4096, seed=0)
    for power in (0.0, 0.5, 1.0):
        gain_D = dimension_gains(x_ND, power)
        energy = (x_ND / gain_D).square().sum(-1).mean()
        torch.testing.assert_close(energy, x_ND.square().sum(-1).mean(), rtol=1e-4, atol=0.0)
    torch.testing.assert_close(dimension_gains(x_ND, 0.0), torch.ones(D))
    sd_D = (x_ND / dimension_gains(x_ND, 1.0)).std(dim=0)
    torch.testing.assert_close(sd_D, sd_D.mean().expand(D), rtol=1e-4, atol=0.0)
    half_D = (x_ND / dimension_gains(x_ND, 0.5)).std(dim=0)
    ratio = float(half_D[0] / half_D[1:].mean())
    assert ratio == pytest.approx(float(x_ND[:, 0].std() / x_ND[:, 1:].std(0).mean()) ** 0.5, rel=0.2)
    with pytest.raises(ValueError, match="dimension_gain_power"):
        TrainConfig(total_tokens=ONE_BATCH, dimension_gain_power=1.5)


def test_plain_error_share_makes_the_loss_the_stated_mix_of_the_weighted_and_plain_fvu() -> None:
    x_ND = outlier_tokens(4096, seed=0)
    error_ND = torch.randn(x_ND.shape, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.1, 3.0, D)
    variance_D = x_ND.double().var(dim=0)
    weighted_D = variance_D.pow(-0.5)  # power 0.5: weights sd^-1
    fvu_weighted = float((error_ND.double().square() * weighted_D).sum() / (variance_D * weighted_D).sum())
    fvu_plain = float(error_ND.double().square().sum() / variance_D.sum())
    for share in (0.0, 0.3, 0.9):
        gain_D = dimension_gains(x_ND, 0.5, share).double()
        loss = float((error_ND.double() / gain_D).square().sum())
        scale = float((x_ND.double() / gain_D).var(dim=0).sum())  # the loss relative to the weighted variance
        assert loss / scale == pytest.approx((1 - share) * fvu_weighted + share * fvu_plain, rel=1e-3)
    assert dimension_gains(x_ND, 0.5, 0.9)[0] < dimension_gains(x_ND, 0.5, 0.0)[0]  # the massive one weighs more


def test_the_element_sets_gains_on_the_first_batch_and_divides_every_batch_by_them() -> None:
    element = DimensionGains(power=0.5, plain_share=0.5)
    x_ND = outlier_tokens(512, seed=1)
    assert torch.equal(element.reweigh(RES, x_ND), x_ND)  # no gains before the first batch
    element.on_first_run_batch({RES: x_ND}, {RES: 2.0})
    expected_D = dimension_gains(x_ND / 2.0, 0.5, 0.5)
    torch.testing.assert_close(element.gains[RES], expected_D, rtol=0, atol=0)
    torch.testing.assert_close(element.reweigh(RES, x_ND), x_ND / expected_D, rtol=0, atol=0)
    restored = DimensionGains(power=0.5, plain_share=0.5)
    restored.load_state_dict(element.state_dict())
    assert torch.equal(restored.gains[RES], element.gains[RES])


def test_the_trainer_builds_its_gains_with_the_plain_error_share(tmp_path: Path) -> None:
    spec = jumprelu_spec(lr=3e-3, target_l0=6.0, decoder_bias_init="mean", threshold_init_from_data=True)
    tokens = outlier_tokens(512, seed=1)  # one batch: the first batch holds every token (in some order)
    config = recipe_train_config(
        SAESCOPE.replace(plain_error_share=0.5), total_tokens=512, batch_size=512, progress=False
    )  # fmt: skip
    trainer = Trainer([spec], ArrayActivations({RES: tokens}), config, tmp_path)
    trainer.run()
    expected_D = dimension_gains(tokens / trainer.norm_scales[RES], 0.5, 0.5)
    torch.testing.assert_close(element_of(trainer, DimensionGains).gains[RES], expected_D, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(expected_D, dimension_gains(tokens / trainer.norm_scales[RES], 0.5, 0.0), rtol=1e-2)


def _weighted_run(tmp_path: Path, power: float, steps: int) -> Trainer:
    spec = jumprelu_spec(lr=3e-3, target_l0=6.0, decoder_bias_init="mean", threshold_init_from_data=True)
    config = recipe_train_config(
        SAESCOPE.replace(dimension_gain_power=power), total_tokens=steps * 512, batch_size=512, progress=False,
        checkpoint_every_steps=10,
    )  # fmt: skip
    return Trainer([spec], ArrayActivations({RES: outlier_tokens(60 * 512, seed=1)}), config, tmp_path)


def test_the_saved_dictionary_absorbs_the_gains_and_reads_c_normalised_activations(tmp_path: Path) -> None:
    trainer = _weighted_run(tmp_path, 0.5, steps=12)
    (trained,) = trainer.run()
    gain_D = element_of(trainer, DimensionGains).gains[RES]
    assert gain_D[0] > 5 * gain_D[1:].max()  # the massive dimension gets the largest gain
    x_ND = outlier_tokens(1024, seed=5) / trained.norm_scale
    saved = read_trained_sae(tmp_path / "saes" / "jr").training_space()
    (member,) = trainer.members
    with torch.no_grad():
        expected = member.sae(x_ND / gain_D).reconstruction * gain_D
        got = saved(x_ND).reconstruction
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(saved.W_dec_FD.norm(dim=-1), torch.ones(WIDTH))  # JumpReLU: unit rows again
    resumed_dir = tmp_path / "resumed"
    _weighted_run(resumed_dir, 0.5, steps=12).run(max_steps=10)  # "killed" after the step-10 checkpoint
    resumed = _weighted_run(resumed_dir, 0.5, steps=12)
    resumed.run()
    torch.testing.assert_close(element_of(resumed, DimensionGains).gains[RES], gain_D, rtol=0.0, atol=0.0)
    for key, value in member.sae.state_dict().items():
        assert torch.equal(value, resumed.members[0].sae.state_dict()[key]), key


def test_dimension_gains_reconstruct_the_small_dimensions_better(tmp_path: Path) -> None:
    """With one massive dimension, the plain squared error spends the dictionary on it; gains share it out."""
    held_out = outlier_tokens(4096, seed=9)
    per_dimension_fvu = {}
    for power in (0.0, 0.5):
        (trained,) = _weighted_run(tmp_path / str(power), power, steps=60).run()
        x_ND = held_out / trained.norm_scale
        with torch.no_grad():
            error_ND = x_ND - trained.sae(x_ND).reconstruction
        per_dimension_fvu[power] = float((error_ND[:, 1:].var(0) / x_ND[:, 1:].var(0)).mean())
    assert per_dimension_fvu[0.5] < 0.8 * per_dimension_fvu[0.0]
