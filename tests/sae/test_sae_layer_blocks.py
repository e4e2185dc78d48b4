"""Every dictionary answers the same block-wise questions, so that training code need not ask which kind it is."""

from __future__ import annotations

import torch

from saescope.sae import DictionaryConfig, build_any_dictionary, build_dictionary


def test_a_single_layer_dictionary_is_its_own_only_block() -> None:
    sae = build_any_dictionary(DictionaryConfig(d_in=8, width=16), generator=torch.Generator().manual_seed(0))
    x_BD = torch.randn(4, 8)
    assert sae.layer_blocks() == [sae]
    (x_block,) = sae.split_inputs(x_BD)
    (y_block,) = sae.split_outputs(x_BD)
    assert x_block is x_BD
    assert y_block is x_BD


def test_a_multi_layer_dictionary_has_one_block_and_one_input_per_layer() -> None:
    config = DictionaryConfig(d_in=8, width=16, n_layers=3, apply_pre_encoder_bias=False)
    clt = build_any_dictionary(config, generator=torch.Generator().manual_seed(0))
    x_BX = torch.randn(4, 24)
    assert len(clt.layer_blocks()) == 3
    assert [tuple(x.shape) for x in clt.split_inputs(x_BX)] == [(4, 8)] * 3
    assert torch.equal(torch.cat(clt.split_inputs(x_BX), dim=-1), x_BX)


def test_absorbing_layer_gains_is_absorbing_the_dimension_gains_of_each_layer() -> None:
    config = DictionaryConfig(d_in=8, width=16)
    gain_in_D, gain_out_D = torch.linspace(0.5, 2.0, 8), torch.linspace(1.5, 0.7, 8)
    by_layer = build_any_dictionary(config, generator=torch.Generator().manual_seed(0))
    direct = build_dictionary(config, generator=torch.Generator().manual_seed(0))
    by_layer.absorb_layer_gains_([gain_in_D], [gain_out_D])
    direct.absorb_dimension_gains_(gain_in_D, gain_out_D)
    for key, value in direct.state_dict().items():
        assert torch.equal(by_layer.state_dict()[key], value), key
