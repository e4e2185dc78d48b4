"""The interface every recipe element implements, and what the training loop hands to it.

A recipe element is one intervention on top of the plain training step (a data-driven start, a hold on the
thresholds, a final refit...). The loop calls every active element at fixed points, in the order the
element list gives; an element overrides only the hooks it needs, and each hook of the base class does
nothing. Elements act on the dictionaries through the methods every dictionary has (`layer_blocks`,
`split_inputs`, `split_outputs`, `absorb_layer_gains_`), so none of them tests which kind it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from saescope.data.activations import ActivationSource
from saescope.models.sites import Site
from saescope.sae import AnyDictionary, SparseDictionary
from saescope.train.schedules import TargetL0Controller

if TYPE_CHECKING:
    from saescope.train.settings import SAESpec, TrainConfig


@dataclass
class Member:
    """A dictionary being trained and its training state."""

    spec: SAESpec
    sae: AnyDictionary
    optimizer: torch.optim.Adam
    controller: TargetL0Controller | None
    #: Per latent (all blocks side by side): tokens since it last fired.
    tokens_since_fired_F: torch.Tensor
    #: The metrics of its last step (and of the refit, once done).
    last: dict[str, float] = field(default_factory=dict)


class TrainingRun(Protocol):
    """What an element that works at the end of training sees of the run (the `Trainer` is one)."""

    members: list[Member]
    source: ActivationSource
    config: TrainConfig
    step: int

    def member_batch(
        self, member: Member, batch: Mapping[Site, torch.Tensor], cache: dict[tuple[Site, Site], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The member's input and target, in the space it trains in."""
        ...

    def agreed_pass_count(self, passes: int) -> int:
        """How many passes over the data this process makes when it needs ``passes`` of them."""
        ...

    def save_checkpoint(self) -> None:
        """Write the run's state, the elements' included."""
        ...


class RecipeElement:
    """One recipe element. Hooks, in the order the loop calls them:

    - `on_first_run_batch`: once, on the first batch of a fresh run (not a resumed one), before any member;
    - `reweigh`: on every site's normalised activations, before a member sees them (training and refit);
    - `on_first_batch`: once per member, on its first batch of a fresh run, before its first step;
    - `after_step`: after each optimiser step of a member, once its dead-latent counters are updated;
    - `at_end`: once the loop stops, before the dictionaries are saved;
    - `on_save`: on the copy of a member that is saved, before it is written.

    An element with state to keep across a resume names `checkpoint_key`: the checkpoint stores its
    `state_dict()` under that key and hands it back to `load_state_dict` on resume.
    """

    checkpoint_key: ClassVar[str | None] = None

    def on_first_run_batch(self, batch: Mapping[Site, torch.Tensor], norm_scales: Mapping[Site, float]) -> None:
        """The first raw batch of a fresh run, every site the run reads, and each site's scale C."""

    def reweigh(self, site: Site, x_BD: torch.Tensor) -> torch.Tensor:
        """A site's activations divided by C, as the dictionaries are to see them."""
        return x_BD

    def on_first_batch(self, member: Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        """The member's first input and target of a fresh run."""

    def after_step(self, member: Member, x_BD: torch.Tensor, firing_counts_F: torch.Tensor) -> None:
        """The step's input and how often each latent fired on it."""

    def at_end(self, run: TrainingRun) -> None:
        """The run after its last step (or after ``max_steps``: check ``run.step``)."""

    def on_save(self, member: Member, sae: AnyDictionary) -> None:
        """``sae``, a copy of the member's dictionary, about to be saved: change it in place."""

    def state_dict(self) -> Any:
        """What a checkpoint keeps of this element (only read when `checkpoint_key` is set)."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore what `state_dict` returned."""


def target_rate(member: Member) -> float:
    """The mean firing rate per latent that the member's target L0 asks for."""
    spec = member.spec
    if spec.target_l0 is None:
        raise ValueError(f"{spec.name}: a firing rate from the target L0 needs target_l0")
    return spec.target_l0 / spec.dictionary.total_width


def target_rate_quantiles(
    block: SparseDictionary, x_BD: torch.Tensor, rate: float, latents_K: torch.Tensor | None = None
) -> torch.Tensor:
    """Each latent's batch quantile of its pre-activation that makes it fire on ``rate`` of the tokens, float32:
    for every latent (F,), or for the latents ``latents_K`` only (K,)."""
    W_enc_DK: torch.Tensor = block.W_enc_DF
    b_enc_K: torch.Tensor = block.b_enc_F
    if latents_K is not None:
        W_enc_DK, b_enc_K = W_enc_DK[:, latents_K], b_enc_K[latents_K]
    pre_BK = block.encoder_input(x_BD) @ W_enc_DK + b_enc_K
    rank = min(x_BD.shape[0], max(1, round(x_BD.shape[0] * (1.0 - rate))))
    quantile_K: torch.Tensor = pre_BK.kthvalue(rank, dim=0).values.float()
    return quantile_K


def block_slices(member: Member, x_BD: torch.Tensor) -> Sequence[tuple[SparseDictionary, torch.Tensor, slice]]:
    """Each block of the member's dictionary, its part of the input, and its latents' slice of the
    dictionary-wide latent index (blocks lie side by side)."""
    sae = member.sae
    parts = []
    offset = 0
    for block, x_block in zip(sae.layer_blocks(), sae.split_inputs(x_BD), strict=True):
        width = block.config.width
        parts.append((block, x_block, slice(offset, offset + width)))
        offset += width
    return parts
