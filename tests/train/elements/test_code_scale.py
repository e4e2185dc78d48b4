"""The code-scale init: every code scaled by its least-squares factor on the first batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from element_fixtures import RES, WIDTH, D, first_batch, sparse_tokens, trainer_for

from saescope.sae import DictionaryConfig, JumpReLU
from saescope.train import SAESpec
from saescope.train.elements import MIN_CODE_SCALE, least_squares_code_scale

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("architecture", ["jumprelu", "topk"])
def test_code_scale_init_gives_the_least_squares_codes_and_keeps_the_firing_pattern(
    tmp_path: Path, architecture: str
) -> None:
    x_ND = sparse_tokens(2048, seed=1)
    dictionary = DictionaryConfig(
        d_in=D, width=WIDTH, architecture=architecture, threshold_parameterisation="raw", lambda_warmup_steps=0,
        k=8 if architecture == "topk" else None,
    )  # fmt: skip
    target = 8.0 if architecture == "jumprelu" else None
    errors, fired = {}, {}
    for scaled in (False, True):
        spec = SAESpec("d", RES, dictionary, target_l0=target, decoder_bias_init="mean")
        trainer = trainer_for(spec, tmp_path / str(scaled), x_ND, code_scale_init=scaled)
        first_batch(trainer, x_ND, x_ND)
        sae = trainer.members[0].sae
        with torch.no_grad():
            out = sae(x_ND)
            coded_ND = out.reconstruction - sae.b_dec_D
            errors[scaled] = [float((x_ND - sae.b_dec_D - a * coded_ND).square().sum()) for a in (0.9, 1.0, 1.1)]
            fired[scaled] = out.codes != 0
    # the same latents fire, but for float ties at θ (θ is set at a batch quantile: one token per latent)
    assert float((fired[True] != fired[False]).float().mean()) < 1e-3
    assert errors[True][1] < 0.5 * errors[False][1]  # random directions overshoot: the scale matters
    assert errors[True][1] < min(errors[True][0], errors[True][2])  # and it is the least-squares one


def test_codes_uncorrelated_with_the_target_start_at_the_smallest_scale() -> None:
    dictionary = DictionaryConfig(d_in=D, width=WIDTH, threshold_parameterisation="raw", threshold_init=1e-3)
    sae = JumpReLU(dictionary, generator=torch.Generator().manual_seed(0))
    x_ND = sparse_tokens(256, 2)
    assert least_squares_code_scale(sae, x_ND, x_ND) > MIN_CODE_SCALE  # an SAE's tied codes do correlate
    anti_ND = 2 * sae.b_dec_D - sae(x_ND).reconstruction  # a target the codes point away from
    assert least_squares_code_scale(sae, x_ND, anti_ND) == MIN_CODE_SCALE
