"""Training recipes: each element's mechanism, the named recipes as data, and default vs faithful on a tiny model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from saescope.data.arrays import ArrayActivations
from saescope.data.corpus import CorpusConfig
from saescope.data.sources import streamed_source
from saescope.models.loading import load_model
from saescope.models.sites import Site, SiteKind
from saescope.release.suite import read_trained_sae
from saescope.sae import CrossLayerDictionary, DictionaryConfig, JumpReLU
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
    with_settings,
)
from saescope.train.specs import dictionary_specs, recipe_train_config
from saescope.train.trainer import MIN_CODE_SCALE, dimension_gains, least_squares_code_scale, linear_map_decoders

RES = Site(0, SiteKind.RES)
ONE_BATCH = 4096  # TrainConfig's default batch size: the fewest tokens a run may have
D, WIDTH = 32, 256


pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_tokens(n: int, seed: int) -> torch.Tensor:
    """Sparse combinations of 96 fixed unit atoms (~6 active per token) on top of a large constant mean."""
    atoms_AD = torch.nn.functional.normalize(torch.randn(96, D, generator=torch.Generator().manual_seed(7)), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    codes_NA = (torch.rand(n, 96, generator=generator) < 6 / 96).float() * (
        torch.rand(n, 96, generator=generator) + 0.5
    )
    mean_D = torch.linspace(-1.0, 1.0, D) * 4.0
    return codes_NA @ atoms_AD + mean_D


def trainer_for(spec: SAESpec, tmp_path: Path, x_ND: torch.Tensor) -> Trainer:
    config = TrainConfig(total_tokens=10**6, batch_size=512, progress=False)
    return Trainer([spec], ArrayActivations({RES: x_ND}), config, tmp_path)


def jumprelu_spec(**kwargs: object) -> SAESpec:
    dictionary = DictionaryConfig(d_in=D, width=WIDTH, threshold_parameterisation="raw", lambda_warmup_steps=0)
    return SAESpec("jr", RES, dictionary, **kwargs)  # type: ignore[arg-type]


def test_mean_init_sets_the_decoder_bias_to_the_data_mean(tmp_path: Path) -> None:
    x_ND = sparse_tokens(512, seed=0)
    trainer = trainer_for(jumprelu_spec(decoder_bias_init="mean"), tmp_path, x_ND)
    trainer._initialise_from_data(trainer.members[0], x_ND, x_ND)
    torch.testing.assert_close(trainer.members[0].sae.b_dec_D.detach(), x_ND.mean(0))


def test_zeros_init_leaves_the_decoder_bias_at_zero(tmp_path: Path) -> None:
    x_ND = sparse_tokens(512, seed=0)
    trainer = trainer_for(jumprelu_spec(decoder_bias_init="zeros"), tmp_path, x_ND)
    trainer._initialise_from_data(trainer.members[0], x_ND, x_ND)
    assert torch.count_nonzero(trainer.members[0].sae.b_dec_D) == 0


def test_geometric_median_ignores_outliers_that_drag_the_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    centre_D = torch.tensor([1.0, -2.0, 0.5])
    x_ND = centre_D + 0.1 * torch.randn(1000, 3, generator=generator)
    x_ND[:50] += 1000.0  # 5% far outliers
    median_D = geometric_median(x_ND)
    assert torch.linalg.vector_norm(median_D - centre_D) < 0.05
    assert torch.linalg.vector_norm(x_ND.mean(0) - centre_D) > 10


@pytest.mark.parametrize("architecture", ["jumprelu", "relu"])
@pytest.mark.parametrize("target", [8.0, 32.0])
def test_data_driven_thresholds_start_within_20_percent_of_the_target_l0(
    tmp_path: Path, target: float, architecture: str
) -> None:
    """JumpReLU: θ at each latent's target-rate quantile; ReLU: b_enc lowered by it (its threshold is 0)."""
    dictionary = DictionaryConfig(d_in=D, width=WIDTH, architecture=architecture, lambda_warmup_steps=0)
    spec = SAESpec("d", RES, dictionary, target_l0=target, decoder_bias_init="mean", threshold_init_from_data=True)
    trainer = trainer_for(spec, tmp_path, sparse_tokens(64, 0))
    x_init = sparse_tokens(4096, seed=1)
    trainer._initialise_from_data(trainer.members[0], x_init, x_init)
    sae = trainer.members[0].sae
    with torch.no_grad():
        heldout_l0 = float((sae.encode(sparse_tokens(4096, seed=2)) != 0).float().sum(-1).mean())
    assert heldout_l0 == pytest.approx(target, rel=0.2)


def test_without_data_driven_thresholds_every_latent_starts_at_theta_init(tmp_path: Path) -> None:
    spec = jumprelu_spec(target_l0=8.0, threshold_init_from_data=False)
    trainer = trainer_for(spec, tmp_path, sparse_tokens(64, 0))
    x_init = sparse_tokens(1024, seed=1)
    trainer._initialise_from_data(trainer.members[0], x_init, x_init)
    sae = trainer.members[0].sae
    assert isinstance(sae, JumpReLU)
    torch.testing.assert_close(sae.threshold_F.detach(), torch.full((WIDTH,), 0.001))


@pytest.mark.parametrize(
    ("kind", "how_dead", "fraction"),
    [
        ("sae", "threshold", 1.0),
        ("sae", "threshold", 0.25),
        ("sae", "encoder_bias", 1.0),
        ("transcoder", "threshold", 1.0),
        ("transcoder", "encoder_bias", 0.25),
    ],
)
def test_revival_restarts_silent_latents_at_a_fraction_of_the_target_rate_and_leaves_the_others(
    tmp_path: Path, kind: str, how_dead: str, fraction: float
) -> None:
    """A latent dies by θ rising above its pre-activations, or by b_enc sinking below θ's floor for every
    token: then θ alone cannot bring it back, and a transcoder's b_enc is lifted (an SAE's is not). The revived
    latents fire on `revive_rate_fraction` of the target rate."""
    target = 16.0
    config = TrainConfig(
        total_tokens=10**6, batch_size=512, progress=False, revive_dead_after_tokens=1024,
        revive_rate_fraction=fraction,
    )  # fmt: skip
    if kind == "sae":
        spec = jumprelu_spec(target_l0=target, decoder_bias_init="mean")
        arrays = {RES: sparse_tokens(64, 0)}
    else:
        site_in, site_out = Site(0, SiteKind.MLP_IN), Site(0, SiteKind.MLP)
        dictionary = DictionaryConfig(
            d_in=D, width=WIDTH, d_out=D, apply_pre_encoder_bias=False, threshold_parameterisation="raw"
        )
        spec = SAESpec("tc", site_in, dictionary, target_l0=target, site_out=site_out, decoder_bias_init="mean")
        arrays = {site_in: sparse_tokens(64, 0), site_out: sparse_tokens(64, 0)}
    trainer = Trainer([spec], ArrayActivations(arrays), config, tmp_path)
    member = trainer.members[0]
    sae = member.sae
    assert isinstance(sae, JumpReLU)
    x_init = sparse_tokens(4096, seed=1)
    trainer._initialise_from_data(member, x_init, x_init)
    dead_K = torch.arange(0, WIDTH, 4)
    theta_F = sae.threshold_F.detach().clone()
    with torch.no_grad():
        if how_dead == "threshold":
            theta_F[dead_K] = 1e6  # far above every pre-activation: these latents can never fire or learn again
            sae.set_threshold_(theta_F)
        else:
            sae.b_enc_F[dead_K] = -1e3  # every pre-activation far below any θ > 0
    member.tokens_since_fired_F[dead_K] = 1024
    member.tokens_since_fired_F[1] = 1023  # silent, but not for long enough
    alive_before_F = sae.threshold_F.detach().clone()
    b_enc_before_F = sae.b_enc_F.detach().clone()

    trainer._revive_dead_latents(member, sparse_tokens(4096, seed=2))

    if (kind, how_dead) == ("sae", "encoder_bias"):
        torch.testing.assert_close(sae.b_enc_F.detach(), b_enc_before_F, rtol=0, atol=0)
        return
    after_F = sae.threshold_F.detach()
    assert bool((after_F[dead_K] < 1e3).all())
    alive_F = torch.ones(WIDTH, dtype=torch.bool)
    alive_F[dead_K] = False
    torch.testing.assert_close(after_F[alive_F], alive_before_F[alive_F], rtol=0, atol=0)
    torch.testing.assert_close(sae.b_enc_F.detach()[alive_F], b_enc_before_F[alive_F], rtol=0, atol=0)
    if how_dead == "encoder_bias":
        assert bool((sae.b_enc_F.detach()[dead_K] > -1e3 + 1).all())
    assert int(member.tokens_since_fired_F[dead_K].max()) == 0
    with torch.no_grad():
        rate_K = (sae.encode(sparse_tokens(4096, seed=3))[:, dead_K] != 0).float().mean(0)
    assert float(rate_K.mean()) == pytest.approx(fraction * target / WIDTH, rel=0.2)


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
        config = TrainConfig(total_tokens=10**6, batch_size=512, progress=False, code_scale_init=scaled)
        trainer = Trainer([spec], ArrayActivations({RES: x_ND}), config, tmp_path / str(scaled))
        trainer._initialise_from_data(trainer.members[0], x_ND, x_ND)
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


def test_linear_map_decoders_follow_the_least_squares_map_and_start_a_transcoder_better(tmp_path: Path) -> None:
    """Targets an exact linear map A of the inputs plus an offset: each init decoder row is its encoder
    direction mapped by A (normalised), and the first reconstruction beats random decoder rows."""
    generator = torch.Generator().manual_seed(3)
    x_ND = sparse_tokens(512, 1)
    A_DE = torch.randn(D, 24, generator=generator) / D**0.5
    y_NE = x_ND @ A_DE + 0.5
    W_enc_DF = torch.randn(D, 64, generator=generator)
    rows_FE = linear_map_decoders(W_enc_DF, x_ND, y_NE)
    torch.testing.assert_close(rows_FE, torch.nn.functional.normalize(W_enc_DF.T @ A_DE, dim=-1), rtol=0, atol=2e-3)

    site_in, site_out = Site(0, SiteKind.MLP_IN), Site(0, SiteKind.MLP)
    dictionary = DictionaryConfig(
        d_in=D, width=WIDTH, d_out=24, apply_pre_encoder_bias=False, threshold_parameterisation="raw"
    )
    spec = SAESpec("t", site_in, dictionary, target_l0=8.0, site_out=site_out, decoder_bias_init="mean")
    fvu = {}
    for linear in (False, True):
        config = TrainConfig(
            total_tokens=10**6, batch_size=512, progress=False, code_scale_init=True, linear_map_decoder_init=linear
        )
        trainer = Trainer([spec], ArrayActivations({site_in: x_ND, site_out: y_NE}), config, tmp_path / str(linear))
        trainer._initialise_from_data(trainer.members[0], x_ND, y_NE)
        with torch.no_grad():
            y_hat_NE = trainer.members[0].sae(x_ND).reconstruction
        fvu[linear] = float((y_hat_NE - y_NE).square().sum() / (y_NE - y_NE.mean(0)).square().sum())
    assert fvu[False] > 0.95  # random output directions explain (next to) nothing
    assert fvu[True] < 0.8


def test_codes_uncorrelated_with_the_target_start_at_the_smallest_scale() -> None:
    dictionary = DictionaryConfig(d_in=D, width=WIDTH, threshold_parameterisation="raw", threshold_init=1e-3)
    sae = JumpReLU(dictionary, generator=torch.Generator().manual_seed(0))
    x_ND = sparse_tokens(256, 2)
    assert least_squares_code_scale(sae, x_ND, x_ND) > MIN_CODE_SCALE  # an SAE's tied codes do correlate
    anti_ND = 2 * sae.b_dec_D - sae(x_ND).reconstruction  # a target the codes point away from
    assert least_squares_code_scale(sae, x_ND, anti_ND) == MIN_CODE_SCALE


def _counts(l0: float, width: int, n_tokens: int = 100) -> torch.Tensor:
    """Firing counts (width,) of a batch of ``n_tokens`` with mean L0 ``l0``."""
    counts_F = torch.zeros(width, dtype=torch.int64)
    counts_F[0] = round(l0 * n_tokens)
    return counts_F


def test_threshold_controller_scales_theta_towards_the_target_l0(tmp_path: Path) -> None:
    spec = jumprelu_spec(target_l0=16.0)
    config = TrainConfig(total_tokens=10**6, batch_size=512, progress=False, threshold_controller_gain=0.5)
    trainer = Trainer([spec], ArrayActivations({RES: sparse_tokens(64, 0)}), config, tmp_path)
    member = trainer.members[0]
    sae = member.sae
    assert isinstance(sae, JumpReLU)
    width = sae.config.width
    theta_F = sae.threshold_F.detach().clone()
    trainer._steer_thresholds(member, _counts(64.0, width), 100)  # 4x the target: θ up by 4 ** 0.5
    torch.testing.assert_close(sae.threshold_F.detach(), 2.0 * theta_F)
    trainer._steer_thresholds(member, _counts(4.0, width), 100)  # a quarter of it: θ down by 2, back to the start
    torch.testing.assert_close(sae.threshold_F.detach(), theta_F)
    trainer._steer_thresholds(member, _counts(16.0 * 100, width), 100)  # clamped at 2x per step
    torch.testing.assert_close(sae.threshold_F.detach(), 2.0 * theta_F)
    off = Trainer(
        [spec],
        ArrayActivations({RES: sparse_tokens(64, 0)}),
        TrainConfig(total_tokens=10, batch_size=10),
        tmp_path / "o",
    )
    before_F = off.members[0].sae.threshold_F.detach().clone()
    off._steer_thresholds(off.members[0], _counts(64.0, width), 100)
    torch.testing.assert_close(off.members[0].sae.threshold_F.detach(), before_F, rtol=0, atol=0)


def test_threshold_controller_steers_each_block_of_a_clt_to_its_share_of_the_target(tmp_path: Path) -> None:
    layers, width = (0, 1), 32
    arrays = {
        Site(layer, kind): sparse_tokens(64, layer) for layer in layers for kind in (SiteKind.MLP_IN, SiteKind.MLP)
    }
    dictionary = DictionaryConfig(
        d_in=D, width=width, n_layers=2, apply_pre_encoder_bias=False, threshold_parameterisation="raw"
    )
    spec = SAESpec("clt", Site(0, SiteKind.MLP_IN), dictionary, target_l0=16.0, site_out=Site(0, SiteKind.MLP),
                   layers=layers)  # fmt: skip
    config = TrainConfig(total_tokens=10**6, batch_size=64, progress=False, threshold_controller_gain=0.5)
    trainer = Trainer([spec], ArrayActivations(arrays), config, tmp_path)
    member = trainer.members[0]
    sae = member.sae
    assert isinstance(sae, CrossLayerDictionary)
    before = [sae.block(i).threshold_F.detach().clone() for i in range(2)]
    # block 0 fires 4x its share (8 per token), block 1 a quarter of it: the total (34) is near the target
    counts_F = torch.cat([_counts(32.0, width), _counts(2.0, width)])
    trainer._steer_thresholds(member, counts_F, 100)
    torch.testing.assert_close(sae.block(0).threshold_F.detach(), 2.0 * before[0])
    torch.testing.assert_close(sae.block(1).threshold_F.detach(), 0.5 * before[1])


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


def outlier_tokens(n: int, seed: int) -> torch.Tensor:
    """`sparse_tokens` with one massive dimension (std ~60x the others') of its own, like Gemma 3's residual."""
    x_ND = sparse_tokens(n, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    x_ND[:, 0] = 200.0 + 30.0 * torch.randn(n, generator=generator)
    return x_ND


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
    assert (
        recipe_train_config(SAESCOPE.replace(dimension_gain_power=0.25), total_tokens=ONE_BATCH).dimension_gain_power
        == 0.25
    )


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
    with pytest.raises(ValueError, match="plain_error_share"):
        TrainConfig(total_tokens=ONE_BATCH, plain_error_share=1.0)
    # At 0 the field stays out of a run's identity, so checkpoints written before it existed still resume.
    assert "plain_error_share" not in TrainConfig(total_tokens=ONE_BATCH).to_dict()
    assert TrainConfig(total_tokens=ONE_BATCH, plain_error_share=0.25).to_dict()["plain_error_share"] == 0.25


def test_the_trainer_builds_its_gains_with_the_plain_error_share(tmp_path: Path) -> None:
    spec = jumprelu_spec(lr=3e-3, target_l0=6.0, decoder_bias_init="mean", threshold_init_from_data=True)
    tokens = outlier_tokens(512, seed=1)  # one batch: the first batch holds every token (in some order)
    config = recipe_train_config(
        SAESCOPE.replace(plain_error_share=0.5), total_tokens=512, batch_size=512, progress=False
    )  # fmt: skip
    trainer = Trainer([spec], ArrayActivations({RES: tokens}), config, tmp_path)
    trainer.run()
    expected_D = dimension_gains(tokens / trainer.norm_scales[RES], 0.5, 0.5)
    torch.testing.assert_close(trainer.dimension_gains[RES], expected_D, rtol=1e-4, atol=1e-6)
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
    gain_D = trainer.dimension_gains[RES]
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
    torch.testing.assert_close(resumed.dimension_gains[RES], gain_D, rtol=0.0, atol=0.0)
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


def _cap_once(
    tmp_path: Path, target_l0: float, mean_multiple: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every θ near zero (about half the latents fire on most tokens), then one firing-rate cap at 5%: the
    firing counts and thresholds before it, and the firing rates and thresholds after it."""
    config = TrainConfig(
        total_tokens=10**6, batch_size=512, progress=False, max_firing_rate=0.05, firing_cap_mean_multiple=mean_multiple
    )
    x_ND = sparse_tokens(2048, 0)
    trainer = Trainer([jumprelu_spec(target_l0=target_l0)], ArrayActivations({RES: x_ND}), config, tmp_path)
    member = trainer.members[0]
    sae = member.sae
    assert isinstance(sae, JumpReLU)
    with torch.no_grad():
        sae.set_threshold_(torch.full((WIDTH,), 1e-3))
        before_F = sae.threshold_F.detach().clone()
        counts_F = (sae.encode(x_ND) != 0).sum(dim=0)
        trainer._cap_firing_rates(member, x_ND, counts_F)
        rates_F = (sae.encode(x_ND) != 0).float().mean(dim=0)
    return counts_F, before_F, rates_F, sae.threshold_F.detach()


def test_the_firing_rate_cap_raises_only_dense_latents_to_the_capped_rate(tmp_path: Path) -> None:
    counts_F, before_F, rates_F, after_F = _cap_once(tmp_path, target_l0=6.0)
    dense_F = counts_F > 0.05 * 2048
    assert 10 < int(dense_F.sum()) < WIDTH
    assert float(rates_F.max()) <= 0.05 + 1 / 2048
    assert bool((rates_F[dense_F] > 0.04).all())  # capped at the rate, not silenced
    torch.testing.assert_close(after_F[~dense_F], before_F[~dense_F], rtol=0, atol=0)
    with pytest.raises(ValueError, match="max_firing_rate"):
        SAESCOPE.replace(max_firing_rate=1.0)


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


def test_the_firing_cap_mean_multiple_is_validated_and_kept_out_of_older_identities() -> None:
    with pytest.raises(ValueError, match="firing_cap_mean_multiple"):
        TrainConfig(total_tokens=ONE_BATCH, firing_cap_mean_multiple=0.5)
    with pytest.raises(ValueError, match="firing_cap_mean_multiple"):
        SAESCOPE.replace(firing_cap_mean_multiple=0.9)
    assert "firing_cap_mean_multiple" not in TrainConfig(total_tokens=ONE_BATCH).to_dict()
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
