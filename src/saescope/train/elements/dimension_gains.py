"""Dimension gains: each dimension of a site's normalised activations divided by a gain set on the first batch.

The plain squared error weighs dimensions by their variance; a massive activation (a dimension holding most of a
residual stream's variance) then decides the loss while the model reads the other dimensions. Dividing each
dimension by a power of its standard deviation evens the weights out; the gains are absorbed into the saved
dictionary, which reads activations divided by C alone like every other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from saescope.models.sites import Site
from saescope.sae import AnyDictionary
from saescope.train.elements.base import Member, RecipeElement

#: A dimension's standard deviation counts as at least this fraction of the largest one (a constant
#: dimension must not get a gain near zero).
MIN_RELATIVE_DIMENSION_SD = 1e-3


@torch.no_grad()
def dimension_gains(x_BD: torch.Tensor, power: float, plain_share: float = 0.0) -> torch.Tensor:
    """Gains g (D,), float32, that a site's normalised activations are divided by, so that the squared error
    weighs dimension d by 1/g_d²: a weight ∝ sd_d^(−2·power) (each dimension's batch standard deviation), mixed
    with the plain squared error's equal weights so that the loss is (1 − plain_share)·FVU_weighted +
    plain_share·FVU_plain on this batch; then one common factor keeps the batch's mean squared norm (so lr, θ and
    ε keep the scale that the normalisation C gave them).

    With power 1 every dimension counts alike in the squared error; with power 0 dimensions count by their
    variance, as plain C-normalisation does. In between, a massive dimension still counts most but no longer
    drowns the rest. The plain share gives the massive dimensions back part of their weight (their error is most
    of the plain FVU) without flattening the others' weights among themselves, as a lower power would.
    """
    x_BD = x_BD.float()
    sd_D = x_BD.std(dim=0)
    sd_D = sd_D.clamp_min(float(sd_D.max()) * MIN_RELATIVE_DIMENSION_SD + 1e-30)
    variance_D = sd_D.square()
    weighted_D = sd_D.pow(-2.0 * power)
    weight_D = (1.0 - plain_share) * weighted_D / (weighted_D * variance_D).sum() + plain_share / variance_D.sum()
    gain_D = weight_D.rsqrt()
    kept = (x_BD / gain_D).square().sum(dim=-1).mean() / x_BD.square().sum(dim=-1).mean().clamp_min(1e-30)
    return gain_D * kept.sqrt()


class DimensionGains(RecipeElement):
    """`TrainConfig.dimension_gain_power` and `plain_error_share`: per-site gains from the first batch, applied
    to every batch, absorbed into the saved dictionaries (and, inverted, into a dictionary started from a
    parent, so that its first step still computes the parent's function)."""

    checkpoint_key: ClassVar[str | None] = "dimension_gains"

    def __init__(self, power: float, plain_share: float) -> None:
        self.power = power
        self.plain_share = plain_share
        #: The gain of each site the run reads, set on the first batch ({} before).
        self.gains: dict[Site, torch.Tensor] = {}

    def on_first_run_batch(self, batch: Mapping[Site, torch.Tensor], norm_scales: Mapping[Site, float]) -> None:
        self.gains = {
            site: dimension_gains(x_BD / norm_scales[site], self.power, self.plain_share)
            for site, x_BD in batch.items()
        }

    def reweigh(self, site: Site, x_BD: torch.Tensor) -> torch.Tensor:
        gain_D = self.gains.get(site)
        return x_BD if gain_D is None else x_BD / gain_D

    @torch.no_grad()
    def on_first_batch(self, member: Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        if member.spec.init_from is not None and self.gains:  # the parent reads C-normalised activations
            gains_in, gains_out = self.member_gains(member)
            member.sae.absorb_layer_gains_([1.0 / g for g in gains_in], [1.0 / g for g in gains_out])

    def on_save(self, member: Member, sae: AnyDictionary) -> None:
        if self.gains:
            sae.absorb_layer_gains_(*self.member_gains(member))

    def member_gains(self, member: Member) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The gains of the member's input sites and of its output sites, in layer order."""
        spec = member.spec
        return [self.gains[s] for s in spec.input_sites], [self.gains[s] for s in spec.output_sites]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {site.id: gain for site, gain in self.gains.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.gains = {Site.parse(site_id): gain for site_id, gain in state.items()}
