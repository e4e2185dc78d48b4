"""The firing cap: θ of a latent that fires on more than its cap of a batch rises to fire on exactly the cap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from element_fixtures import WIDTH, jumprelu_spec, sparse_tokens, trainer_for

from saescope.sae import JumpReLU
from saescope.train.elements import FiringCap

pytestmark = pytest.mark.usefixtures("one_thread")


def _cap_once(
    tmp_path: Path, target_l0: float, mean_multiple: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every θ near zero (about half the latents fire on most tokens), then one firing-rate cap at 5%: the
    firing counts and thresholds before it, and the firing rates and thresholds after it."""
    x_ND = sparse_tokens(2048, 0)
    member = trainer_for(jumprelu_spec(target_l0=target_l0), tmp_path, x_ND).members[0]
    sae = member.sae
    assert isinstance(sae, JumpReLU)
    with torch.no_grad():
        sae.set_threshold_(torch.full((WIDTH,), 1e-3))
        before_F = sae.threshold_F.detach().clone()
        counts_F = (sae.encode(x_ND) != 0).sum(dim=0)
        FiringCap(max_rate=0.05, mean_multiple=mean_multiple).after_step(member, x_ND, counts_F)
        rates_F = (sae.encode(x_ND) != 0).float().mean(dim=0)
    return counts_F, before_F, rates_F, sae.threshold_F.detach()


def test_the_firing_rate_cap_raises_only_dense_latents_to_the_capped_rate(tmp_path: Path) -> None:
    counts_F, before_F, rates_F, after_F = _cap_once(tmp_path, target_l0=6.0)
    dense_F = counts_F > 0.05 * 2048
    assert 10 < int(dense_F.sum()) < WIDTH
    assert float(rates_F.max()) <= 0.05 + 1 / 2048
    assert bool((rates_F[dense_F] > 0.04).all())  # capped at the rate, not silenced
    torch.testing.assert_close(after_F[~dense_F], before_F[~dense_F], rtol=0, atol=0)


def test_the_firing_rate_cap_never_falls_below_twice_the_rate_the_target_asks_for(tmp_path: Path) -> None:
    """Target 32 of 256 latents is 12.5% each on average: a 5% cap would make the target unreachable."""
    _, _, rates_F, _ = _cap_once(tmp_path, target_l0=32.0)
    assert float(rates_F.max()) == pytest.approx(0.25, abs=2 / 2048)


@pytest.mark.parametrize(("mean_multiple", "cap"), [(1.25, 1.25 * 32 / 256), (1.0, 32 / 256)])
def test_the_firing_rate_cap_floor_is_the_stated_multiple_of_the_mean_rate(
    tmp_path: Path, mean_multiple: float, cap: float
) -> None:
    _, _, rates_F, _ = _cap_once(tmp_path, target_l0=32.0, mean_multiple=mean_multiple)
    assert float(rates_F.max()) == pytest.approx(cap, abs=2 / 2048)
