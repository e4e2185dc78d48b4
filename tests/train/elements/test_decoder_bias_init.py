"""The decoder-bias init: b_dec at the first batch's mean or geometric median, or left at zero."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from element_fixtures import jumprelu_spec, sparse_tokens, trainer_for

from saescope.train.elements import DecoderBiasInit
from saescope.train.inits import geometric_median

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("how", "expected"), [("mean", lambda x: x.mean(0)), ("geometric_median", geometric_median)])
def test_the_decoder_bias_starts_at_the_first_batchs_centre(tmp_path: Path, how: str, expected: object) -> None:
    x_ND = sparse_tokens(512, seed=0)
    trainer = trainer_for(jumprelu_spec(decoder_bias_init=how), tmp_path, x_ND)
    DecoderBiasInit().on_first_batch(trainer.members[0], x_ND, x_ND)
    assert callable(expected)
    torch.testing.assert_close(trainer.members[0].sae.b_dec_D.detach(), expected(x_ND))


def test_zeros_init_leaves_the_decoder_bias_at_zero(tmp_path: Path) -> None:
    x_ND = sparse_tokens(512, seed=0)
    trainer = trainer_for(jumprelu_spec(decoder_bias_init="zeros"), tmp_path, x_ND)
    DecoderBiasInit().on_first_batch(trainer.members[0], x_ND, x_ND)
    assert torch.count_nonzero(trainer.members[0].sae.b_dec_D) == 0


def test_a_dictionary_started_from_a_parent_keeps_its_parents_decoder_bias(tmp_path: Path) -> None:
    x_ND = sparse_tokens(512, seed=0)
    trainer = trainer_for(jumprelu_spec(decoder_bias_init="mean"), tmp_path, x_ND)
    member = trainer.members[0]
    member.spec = jumprelu_spec(decoder_bias_init="mean", init_from="parent-folder")
    DecoderBiasInit().on_first_batch(member, x_ND, x_ND)
    assert torch.count_nonzero(member.sae.b_dec_D) == 0
