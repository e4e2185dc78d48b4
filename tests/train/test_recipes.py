"""Training recipes: each element's mechanism, the named recipes as data, and default vs faithful on a tiny model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from saescope.data.corpus import CorpusConfig
from saescope.data.sources import streamed_source
from saescope.models.loading import load_model
from saescope.models.sites import Site, SiteKind
from saescope.train import SAESpec, TrainConfig, Trainer
from saescope.train.recipes import (
    GEMMA_SCOPE,
    RECIPE_KEYS,
    RECIPES,
    SAESCOPE,
    describe_settings,
    geometric_median,
    get_recipe,
    parse_set_options,
    short_budget_warning,
    with_settings,
)
from saescope.train.specs import dictionary_specs, family_specs, matryoshka_widths, recipe_train_config

RES = Site(0, SiteKind.RES)
ONE_BATCH = 4096  # TrainConfig's default batch size: the fewest tokens a run may have
D, WIDTH = 32, 256


pytestmark = pytest.mark.usefixtures("one_thread")


def test_geometric_median_ignores_outliers_that_drag_the_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    centre_D = torch.tensor([1.0, -2.0, 0.5])
    x_ND = centre_D + 0.1 * torch.randn(1000, 3, generator=generator)
    x_ND[:50] += 1000.0  # 5% far outliers
    median_D = geometric_median(x_ND)
    assert torch.linalg.vector_norm(median_D - centre_D) < 0.05
    assert torch.linalg.vector_norm(x_ND.mean(0) - centre_D) > 10


def test_revival_is_off_by_default_and_recipes_pass_it_and_adam_beta1_to_the_trainer() -> None:
    assert TrainConfig(total_tokens=ONE_BATCH).revive_dead_after_tokens == 0
    config = recipe_train_config(
        SAESCOPE.replace(revive_dead_after_tokens=4096, adam_beta1=0.9), total_tokens=ONE_BATCH
    )
    assert (config.revive_dead_after_tokens, config.adam_betas) == (4096, (0.9, 0.999))
    assert not TrainConfig(total_tokens=ONE_BATCH).code_scale_init
    assert recipe_train_config(SAESCOPE.replace(code_scale_init=True), total_tokens=ONE_BATCH).code_scale_init
    assert not TrainConfig(total_tokens=ONE_BATCH).linear_map_decoder_init
    assert recipe_train_config(SAESCOPE, total_tokens=ONE_BATCH).linear_map_decoder_init
    with pytest.raises(ValueError, match="adam_beta1"):
        SAESCOPE.replace(adam_beta1=1.0)
    assert TrainConfig(total_tokens=ONE_BATCH).revive_rate_fraction == 1.0
    assert (
        recipe_train_config(SAESCOPE, total_tokens=ONE_BATCH).revive_rate_fraction == SAESCOPE.revive_rate_fraction < 1
    )
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError, match="revive_rate_fraction"):
            SAESCOPE.replace(revive_rate_fraction=fraction)
        with pytest.raises(ValueError, match="revive_rate_fraction"):
            TrainConfig(total_tokens=ONE_BATCH, revive_rate_fraction=fraction)


def test_the_faithful_recipe_is_the_papers() -> None:
    (spec,) = dictionary_specs([RES], {RES: D}, [WIDTH], ["jumprelu"], [20.0], get_recipe("gemma-scope"))
    c = spec.dictionary
    assert (spec.lr, c.threshold_parameterisation, c.threshold_init, c.bandwidth) == (7e-5, "log", 0.001, 0.001)
    assert (c.lambda_warmup_steps, spec.decoder_bias_init) == (10_000, "zeros")
    assert (c.sparsity, c.target_l0, spec.target_l0, spec.init_thresholds_from_data) == (
        "quadratic_l0",
        20.0,
        None,
        False,
    )
    config = recipe_train_config(GEMMA_SCOPE, total_tokens=4096)
    assert (config.lr_warmup_steps, config.lr_warmup_start_fraction, config.lr_decay_fraction) == (1000, 0.1, 0.0)


def test_the_default_recipe_steers_l0_from_a_data_driven_start() -> None:
    options = SAESCOPE.replace(lr=2e-3)
    jr, relu, topk = dictionary_specs([RES], {RES: D}, [WIDTH], ["jumprelu", "relu", "topk"], [20.0], options)
    assert (jr.lr, jr.target_l0, jr.init_thresholds_from_data, jr.decoder_bias_init) == (2e-3, 20.0, True, "mean")
    assert (jr.dictionary.sparsity, jr.dictionary.threshold_parameterisation) == ("l0", "raw")
    assert relu.target_l0 == 20.0
    assert topk.dictionary.k == 20
    assert topk.target_l0 is None
    assert recipe_train_config(SAESCOPE, total_tokens=4096, batch_size=512).controller_gain == SAESCOPE.controller_gain


def test_unknown_recipe_and_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown recipe 'fast'; available: gemma-scope, saescope"):
        get_recipe("fast")
    with pytest.raises(ValueError, match="decoder_bias_init"):
        SAESCOPE.replace(decoder_bias_init="median")
    with pytest.raises(ValueError, match="l0_steering"):
        SAESCOPE.replace(l0_steering="pid")
    assert set(RECIPES) == {"gemma-scope", "saescope"}


def test_default_recipe_reconstructs_better_than_the_faithful_one_on_a_tiny_model(
    tiny_model_dir: Path, text_corpus: Path, tmp_path: Path
) -> None:
    loaded = load_model(str(tiny_model_dir))
    site = Site(1, SiteKind.RES)
    corpus = CorpusConfig(source=str(text_corpus), context_size=32, heldout_fraction=0.0)
    source = streamed_source(loaded, [site], corpus, batch_windows=8, norm_tokens=512, buffer_tokens=1024)
    d_in = source.widths[site]
    specs = []
    for recipe in (GEMMA_SCOPE, SAESCOPE):
        (spec,) = dictionary_specs([site], {site: d_in}, [64], ["jumprelu"], [8.0], recipe)
        specs.append(SAESpec(recipe.name, site, spec.dictionary, spec.lr, spec.target_l0,
                             spec.threshold_init_from_data, spec.decoder_bias_init))  # fmt: skip
    final = {}
    for spec, recipe in zip(specs, (GEMMA_SCOPE, SAESCOPE), strict=True):
        config = recipe_train_config(recipe, total_tokens=40 * 128, batch_size=128, progress=False)
        (trained,) = Trainer([spec], source, config, tmp_path / recipe.name).run()
        final[recipe.name] = trained.final_metrics
    assert final["saescope"]["fvu"] < final["gemma-scope"]["fvu"]
    assert final["saescope"]["fvu"] < 0.9 * final["gemma-scope"]["fvu"]


def test_dimension_gain_settings_are_validated_and_passed_by_recipes() -> None:
    with pytest.raises(ValueError, match="dimension_gain_power"):
        TrainConfig(total_tokens=ONE_BATCH, dimension_gain_power=1.5)
    assert (
        recipe_train_config(SAESCOPE.replace(dimension_gain_power=0.25), total_tokens=ONE_BATCH).dimension_gain_power
        == 0.25
    )
    with pytest.raises(ValueError, match="plain_error_share"):
        TrainConfig(total_tokens=ONE_BATCH, plain_error_share=1.0)
    # Saved at every value; a version-1 identity (which left it out at 0) reads as 0.
    assert TrainConfig(total_tokens=ONE_BATCH).to_dict()["plain_error_share"] == 0.0
    assert TrainConfig(total_tokens=ONE_BATCH, plain_error_share=0.25).to_dict()["plain_error_share"] == 0.25
    assert TrainConfig.from_dict(_version_1(TrainConfig(total_tokens=ONE_BATCH).to_dict())).plain_error_share == 0.0


def _version_1(saved: dict[str, Any]) -> dict[str, Any]:
    """A training-settings record as version 1 saved it: no version, and the two fields at their defaults left out."""
    left_out = ("schema_version", "plain_error_share", "firing_cap_mean_multiple")
    return {key: value for key, value in saved.items() if key not in left_out}


def test_a_firing_cap_of_the_whole_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="max_firing_rate"):
        SAESCOPE.replace(max_firing_rate=1.0)


def test_the_firing_cap_mean_multiple_is_validated_and_version_1_identities_read_it_at_2() -> None:
    with pytest.raises(ValueError, match="firing_cap_mean_multiple"):
        TrainConfig(total_tokens=ONE_BATCH, firing_cap_mean_multiple=0.5)
    with pytest.raises(ValueError, match="firing_cap_mean_multiple"):
        SAESCOPE.replace(firing_cap_mean_multiple=0.9)
    assert TrainConfig(total_tokens=ONE_BATCH).to_dict()["firing_cap_mean_multiple"] == 2.0
    version_1 = _version_1(TrainConfig(total_tokens=ONE_BATCH, firing_cap_mean_multiple=1.25).to_dict())
    assert TrainConfig.from_dict(version_1).firing_cap_mean_multiple == 2.0
    assert (
        TrainConfig(total_tokens=ONE_BATCH, firing_cap_mean_multiple=1.25).to_dict()["firing_cap_mean_multiple"] == 1.25
    )
    config = recipe_train_config(SAESCOPE.replace(firing_cap_mean_multiple=1.25), total_tokens=ONE_BATCH)
    assert config.firing_cap_mean_multiple == 1.25


def test_a_run_of_fewer_tokens_than_one_batch_is_refused_not_trained_for_one_step() -> None:
    with pytest.raises(ValueError, match=r"training tokens \(100\) are fewer than one batch \(128 tokens\)"):
        SAESCOPE.train_config(total_tokens=100, batch_size=128)
    assert SAESCOPE.train_config(total_tokens=128, batch_size=128).total_steps == 1


def test_the_recipe_fills_every_train_config_field_it_names_and_nothing_else() -> None:
    config = SAESCOPE.replace(max_firing_rate=0.1, lr_warmup_steps=3).train_config(total_tokens=512, batch_size=256)
    run_wide = {f.name for f in dataclasses.fields(TrainConfig)} & set(RECIPE_KEYS)
    assert run_wide  # the run-wide settings: schedules, controllers, the short-budget elements
    for name in run_wide:
        assert getattr(config, name) == getattr(SAESCOPE.replace(max_firing_rate=0.1, lr_warmup_steps=3), name)
    assert config.adam_betas == (SAESCOPE.adam_beta1, SAESCOPE.adam_beta2)
    assert (config.total_tokens, config.batch_size, config.seed) == (512, 256, 0)
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['lr'\]"):
        SAESCOPE.train_config(total_tokens=512, lr=1.0)


def test_settings_by_key_are_typed_validated_and_unknown_keys_list_the_valid_ones() -> None:
    changed = with_settings("saescope", parse_set_options(["lr=1e-3", "code_scale_init=false", "threshold=log"]))
    assert (changed.lr, changed.code_scale_init, changed.threshold) == (1e-3, False, "log")
    assert with_settings(GEMMA_SCOPE, {"revive_dead_after_tokens": "4_096"}).revive_dead_after_tokens == 4096
    with pytest.raises(ValueError, match=r"unknown recipe setting\(s\) \['lrate'\]; valid keys: lr, threshold"):
        with_settings("saescope", {"lrate": 1})
    with pytest.raises(ValueError, match="code_scale_init takes true or false; got 'maybe'"):
        with_settings("saescope", {"code_scale_init": "maybe"})
    with pytest.raises(ValueError, match=r"revive_dead_after_tokens takes a whole number; got 1\.5"):
        with_settings("saescope", {"revive_dead_after_tokens": 1.5})
    with pytest.raises(ValueError, match="--set takes key=value"):
        parse_set_options(["lr"])
    described = describe_settings(SAESCOPE)
    assert all(f"  {key} = " in described for key in RECIPE_KEYS)


def test_short_budget_warning_only_where_a_penalty_aims_at_the_l0_and_its_warm_up_outlasts_the_run() -> None:
    warning = short_budget_warning(GEMMA_SCOPE, total_steps=9_999, batch_size=1024)
    assert warning is not None
    assert "10,000 steps (10,240,000 tokens at batch 1,024)" in warning
    assert "trains 9,999 steps" in warning
    assert short_budget_warning(GEMMA_SCOPE, total_steps=10_000, batch_size=1024) is None
    # the default recipe's θ controller holds L0 whatever λ's warm-up
    assert short_budget_warning(SAESCOPE.replace(lambda_warmup_steps=500), total_steps=10, batch_size=64) is None
    fixed = GEMMA_SCOPE.replace(l0_steering="none")
    assert short_budget_warning(fixed, total_steps=10, batch_size=64) is not None


def test_matryoshka_prefixes_nest_each_a_quarter_of_the_next_up_to_the_width() -> None:
    assert matryoshka_widths(4096, 3) == (256, 1024, 4096)
    assert matryoshka_widths(4096, 1) == (4096,)
    assert matryoshka_widths(16, 5) == (1, 4, 16)  # no prefix narrower than one latent, none twice


def test_the_matryoshka_setting_makes_every_single_layer_dictionary_nested() -> None:
    recipe = with_settings("saescope", {"matryoshka_prefixes": "3"})
    jr, topk = dictionary_specs([RES], {RES: D}, [WIDTH], ["jumprelu", "topk"], [20.0], recipe)
    assert jr.dictionary.matryoshka_prefixes == topk.dictionary.matryoshka_prefixes == (16, 64, 256)
    (plain,) = dictionary_specs([RES], {RES: D}, [WIDTH], ["jumprelu"], [20.0], SAESCOPE)
    assert plain.dictionary.matryoshka_prefixes is None
    mlp_in, mlp = Site(0, SiteKind.MLP_IN), Site(0, SiteKind.MLP)
    (transcoder,) = family_specs("transcoder", [0], {mlp_in: D, mlp: D}, [WIDTH], ["jumprelu"], [20.0], recipe)
    assert transcoder.dictionary.matryoshka_prefixes == (16, 64, 256)


def test_the_matryoshka_setting_is_refused_for_multi_layer_dictionaries_and_below_zero() -> None:
    recipe = with_settings("saescope", {"matryoshka_prefixes": "2"})
    widths = {Site(layer, kind): D for layer in (0, 1) for kind in (SiteKind.MLP_IN, SiteKind.MLP)}
    with pytest.raises(ValueError, match="apply to single-layer dictionaries"):
        family_specs("clt", [0, 1], widths, [WIDTH], ["jumprelu"], [20.0], recipe)
    with pytest.raises(ValueError, match="matryoshka_prefixes must be >= 0"):
        with_settings("saescope", {"matryoshka_prefixes": "-1"})
