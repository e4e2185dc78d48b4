"""Decoder refit: after the last step, each single-layer decoder set to the least-squares read-out of its codes.

The mechanism (normal equations, ridge, which dictionaries qualify) is `saescope.train.refit`; this element runs
it once at the end of a finished run, over the first training tokens, and records that it did so that a resumed
run saves the refit dictionaries without refitting them again.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
from tqdm import tqdm

from saescope.models.sites import Site
from saescope.sae import SparseDictionary
from saescope.train.elements.base import Member, RecipeElement, TrainingRun
from saescope.train.refit import PASS_MEMORY_BYTES, DecoderRefit, accumulator_bytes, refit_passes, refittable

log = logging.getLogger(__name__)


class DecoderRefitAtEnd(RecipeElement):
    """`TrainConfig.decoder_refit_tokens`: one or more passes over the first ``tokens`` training tokens once the
    run has taken its last step, then each refittable decoder solved in place (in the training space, before any
    dimension gains are absorbed). The codes, and so L0, do not change."""

    checkpoint_key: ClassVar[str | None] = "decoders_refit"

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        #: Whether this run's decoders are refit already.
        self.done = False

    def at_end(self, run: TrainingRun) -> None:
        if run.step != run.config.total_steps or self.done:
            return
        refit_decoders(run, min(self.tokens, run.config.total_tokens))
        self.done = True
        run.save_checkpoint()  # a resumed run saves the refit dictionaries without refitting them again

    def state_dict(self) -> bool:
        return self.done

    def load_state_dict(self, state: bool) -> None:
        self.done = bool(state)


def refit_decoders(run: TrainingRun, tokens: int) -> None:
    """Refit every refittable member's decoder on the first ``tokens`` tokens of the run's data, in as many
    passes as their normal equations need; each member's last metrics gain its FVU before and after."""
    refittable_members = [(m, m.sae) for m in run.members if refittable(m.sae)]
    for member in run.members:
        sae = member.sae
        if isinstance(sae, SparseDictionary) and sae.config.matryoshka_prefixes is None and not refittable(sae):
            log.warning(
                "%s keeps its trained decoder: its decoder refit's normal equations (%.1f GiB at width %d) exceed "
                "the refit's %.1f GiB per pass",
                member.spec.name, accumulator_bytes(sae) / 2**30, sae.config.width, PASS_MEMORY_BYTES / 2**30,
            )  # fmt: skip
    groups = refit_passes([sae for _, sae in refittable_members])
    for index in range(run.agreed_pass_count(len(groups))):
        group = [refittable_members[i] for i in groups[index]] if index < len(groups) else []
        refits = [(member, DecoderRefit(sae)) for member, sae in group]
        _accumulate(run, refits, tokens)
        for member, refit in refits:
            before, after = refit.solve_()
            member.last = {**member.last, "refit_fvu_before": before, "refit_fvu": after}


def _accumulate(run: TrainingRun, refits: list[tuple[Member, DecoderRefit]], tokens: int) -> None:
    """One pass over the first ``tokens`` tokens, each batch added to every refit of the pass."""
    config = run.config
    sites = sorted({site for m, _ in refits for site in (*m.spec.input_sites, *m.spec.output_sites)})
    seen = 0
    with tqdm(total=tokens, unit="tok", unit_scale=True, disable=not config.progress,
              desc=f"refitting {len(refits)} decoder{'s' if len(refits) != 1 else ''}") as bar:  # fmt: skip
        for raw in run.source.batches(config.batch_size, seed=config.seed):
            take = min(next(iter(raw.values())).shape[0], tokens - seen)
            on_device = {site: raw[site][:take].to(config.device) for site in sites}
            cache: dict[tuple[Site, Site], torch.Tensor] = {}
            for member, refit in refits:
                refit.update(*run.member_batch(member, on_device, cache))
            seen += take
            bar.update(take)
            if seen >= tokens:
                break
