from __future__ import annotations

import pytest
from torch import nn

from saescope.models.sites import (
    Site,
    SiteKind,
    UnsupportedArchitectureError,
    architecture_for_model_type,
    hf_hook_name,
    select_sites,
    site_width,
)


def test_site_id_round_trip_and_hook_names() -> None:
    site = Site.parse("layer_6/res")
    assert site == Site(6, SiteKind.RES)
    assert site.id == "layer_6/res"
    assert site.tl_hook_name == "blocks.6.hook_resid_post"
    assert Site(6, SiteKind.ATT).tl_hook_name == "blocks.6.attn.hook_z"
    assert Site(6, SiteKind.MLP).tl_hook_name == "blocks.6.hook_mlp_out"
    assert Site(2, SiteKind.MLP_IN).tl_hook_name == "blocks.2.ln2.hook_normalized"


@pytest.mark.parametrize("bad", ["layer_x/res", "6/res", "layer_6/attn", "layer_-1/res"])
def test_bad_site_ids_are_rejected_with_the_expected_form(bad: str) -> None:
    with pytest.raises(ValueError, match=r"layer_|unknown site kind"):
        Site.parse(bad)


def test_select_sites_forms() -> None:
    assert len(select_sites("all", 18)) == 54
    assert select_sites("res", 3) == [Site(0, SiteKind.RES), Site(1, SiteKind.RES), Site(2, SiteKind.RES)]
    assert select_sites("1-2/mlp+att", 4) == sorted(
        [Site(1, SiteKind.MLP), Site(1, SiteKind.ATT), Site(2, SiteKind.MLP), Site(2, SiteKind.ATT)]
    )
    assert select_sites("layer_0/res, 1/*", 4) == sorted(
        [Site(0, SiteKind.RES), Site(1, SiteKind.RES), Site(1, SiteKind.ATT), Site(1, SiteKind.MLP)]
    )
    with pytest.raises(ValueError, match="outside the model's layers"):
        select_sites("0-9/res", 4)
    with pytest.raises(ValueError, match="known kinds"):
        select_sites("bogus", 4)


def test_gemma3_hook_strings_match_gemma_scope_2_configs(tiny_gemma: nn.Module) -> None:
    # method §6.2: the hf_hook_point strings found in Gemma Scope 2 config.json files.
    assert hf_hook_name(tiny_gemma, Site(2, SiteKind.RES)) == "model.layers.2.output"
    assert hf_hook_name(tiny_gemma, Site(2, SiteKind.ATT)) == "model.layers.2.self_attn.o_proj.input"
    assert hf_hook_name(tiny_gemma, Site(2, SiteKind.MLP)) == "model.layers.2.post_feedforward_layernorm.output"
    assert hf_hook_name(tiny_gemma, Site(2, SiteKind.MLP_IN)) == "model.layers.2.pre_feedforward_layernorm.output"


def test_att_width_is_heads_times_head_dim(tiny_gemma: nn.Module) -> None:
    assert site_width(tiny_gemma, SiteKind.ATT) == 4 * 16
    assert site_width(tiny_gemma, SiteKind.RES) == 32


def test_unknown_architecture_lists_supported_ones() -> None:
    with pytest.raises(UnsupportedArchitectureError, match=r"supported model types: .*gemma3_text.*gpt2"):
        architecture_for_model_type("mamba")
