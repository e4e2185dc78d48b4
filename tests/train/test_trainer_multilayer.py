"""The trainer on multi-layer dictionaries (CLT, crosscoder): a killed run resumes bit for bit (fast, 1 thread)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from saescope.data.activations import SiteBatch
from saescope.data.arrays import ArrayActivations
from saescope.models.sites import Site, SiteKind
from saescope.sae import CrossLayerDictionary, DictionaryConfig
from saescope.train import SAESpec, TrainConfig, Trainer

D, D_OUT, WIDTH, N_ATOMS = 8, 6, 16, 24
CLT_LAYERS, CROSSCODER_LAYERS = (0, 1, 2), (0, 2, 3)
BATCH, STEPS, CHECKPOINT_EVERY = 32, 40, 26


pytestmark = pytest.mark.usefixtures("one_thread")


def multi_layer_sites(n: int, seed: int = 0) -> dict[Site, torch.Tensor]:
    """One sparse code per token (~3 of 24 atoms active) read out linearly, with an offset, at every site:
    mlp_in (width D) and mlp (width D_OUT) at the CLT's layers, res (width D) at the crosscoder's."""
    generator = torch.Generator().manual_seed(seed)
    mask_NA = (torch.rand(n, N_ATOMS, generator=generator) < 3 / N_ATOMS).float()
    codes_NA = mask_NA * (torch.rand(n, N_ATOMS, generator=generator) + 0.5)
    readouts = torch.Generator().manual_seed(99)
    sites = [Site(layer, kind) for layer in CLT_LAYERS for kind in (SiteKind.MLP_IN, SiteKind.MLP)]
    sites += [Site(layer, SiteKind.RES) for layer in CROSSCODER_LAYERS]
    arrays = {}
    for site in sites:
        width = D_OUT if site.kind is SiteKind.MLP else D
        atoms_AD = torch.nn.functional.normalize(torch.randn(N_ATOMS, width, generator=readouts), dim=-1)
        arrays[site] = codes_NA @ atoms_AD * 3.0 + torch.randn(width, generator=readouts)
    return arrays


def multi_layer_config(d_out: int) -> DictionaryConfig:
    return DictionaryConfig(
        d_in=D, width=WIDTH, d_out=d_out, apply_pre_encoder_bias=False, n_layers=3, skip=True,
        threshold_parameterisation="raw", lambda_warmup_steps=0, l0_coefficient=3e-3,
    )  # fmt: skip


def specs() -> list[SAESpec]:
    """A 3-layer CLT (mlp_in -> mlp of layers 0-2, different widths) and a 3-layer crosscoder (res of 0, 2, 3)."""
    settings: dict[str, Any] = {"lr": 4e-3, "target_l0": 6.0, "decoder_bias_init": "mean"}
    clt = SAESpec("clt", Site(0, SiteKind.MLP_IN), multi_layer_config(D_OUT), site_out=Site(0, SiteKind.MLP),
                  layers=CLT_LAYERS, **settings)  # fmt: skip
    crosscoder = SAESpec("xc", Site(0, SiteKind.RES), multi_layer_config(D), layers=CROSSCODER_LAYERS, **settings)
    return [clt, crosscoder]


def config() -> TrainConfig:
    # Revival on: a latent silent for two batches in a row gets a new θ, so the silent-token counters are state
    # the checkpoint must carry (the epoch holds 31 full batches and one of 8 tokens).
    return TrainConfig(
        total_tokens=STEPS * BATCH, batch_size=BATCH, lr_warmup_steps=10, checkpoint_every_steps=CHECKPOINT_EVERY,
        revive_dead_after_tokens=3 * BATCH // 2, progress=False,
    )  # fmt: skip


class KilledError(Exception):
    """Stands for the process dying mid-run."""


class KilledAfter(ArrayActivations):
    """Dies when the trainer asks for batch number `after` + 1, counted across epochs."""

    def __init__(self, arrays: dict[Site, torch.Tensor], after: int) -> None:
        super().__init__(arrays)
        self.left = after

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, skip_batches: int = 0) -> Iterator[SiteBatch]:
        for batch in super().batches(batch_size, seed=seed, epoch=epoch, skip_batches=skip_batches):
            if self.left == 0:
                raise KilledError
            self.left -= 1
            yield batch


def assert_identical(straight: object, resumed: object, where: str) -> None:
    """Every tensor bit for bit, every other value equal, through nested dicts and lists."""
    if isinstance(straight, torch.Tensor):
        assert isinstance(resumed, torch.Tensor), where
        assert straight.dtype == resumed.dtype, where
        assert torch.equal(straight, resumed), where
    elif isinstance(straight, dict):
        assert isinstance(resumed, dict), where
        assert straight.keys() == resumed.keys(), where
        for key, value in straight.items():
            assert_identical(value, resumed[key], f"{where}/{key}")
    elif isinstance(straight, (list, tuple)):
        assert isinstance(resumed, type(straight)), where
        assert len(straight) == len(resumed), where
        for index, (a, b) in enumerate(zip(straight, resumed, strict=True)):
            assert_identical(a, b, f"{where}[{index}]")
    else:
        assert straight == resumed, where


@pytest.mark.parametrize("interruption", ["max_steps", "kill"])
def test_kill_and_resume_of_a_clt_and_a_crosscoder_gives_bit_identical_weights(
    tmp_path: Path, interruption: str
) -> None:
    arrays = multi_layer_sites(1_000)  # 31.25 batches per epoch: the run crosses an epoch after the resume
    source = ArrayActivations(arrays)
    Trainer(specs(), source, config(), tmp_path / "straight").run()
    if interruption == "max_steps":  # stopped cleanly at 26 (a checkpoint is written where it stops)
        Trainer(specs(), source, config(), tmp_path / "resumed").run(max_steps=CHECKPOINT_EVERY)
    else:  # dies asking for batch 34: steps 27-33 and the log row of step 30 are lost, the checkpoint of 26 kept
        with pytest.raises(KilledError):
            Trainer(specs(), KilledAfter(arrays, after=33), config(), tmp_path / "resumed").run()
    killed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert killed["step"] == CHECKPOINT_EVERY
    # Some latent has been silent for a batch at the checkpoint: the counters that decide revival are state
    # the resume must carry (with these seeds, one is revived on step 27 and would not be if they were lost).
    assert any(bool(member["tokens_since_fired"].any()) for member in killed["members"].values())
    trained_clt, _ = Trainer(specs(), source, config(), tmp_path / "resumed").run()

    straight, resumed = (
        torch.load(tmp_path / run / "checkpoint.pt", weights_only=False) for run in ("straight", "resumed")
    )
    assert straight["step"] == STEPS
    for key in ("step", "tokens_seen", "epoch", "batch_in_epoch", "norm_scales", "torch_rng", "members"):
        assert_identical(straight[key], resumed[key], key)
    for name in ("clt", "xc"):  # and the saved dictionary folders hold the same bytes
        weights = [(tmp_path / run / "saes" / name / "sae.safetensors").read_bytes() for run in ("straight", "resumed")]
        assert weights[0] == weights[1], name
    # What was compared is a CLT in training: its cross decoders left their zero start and kept moving after
    # the checkpoint, and its latents fire.
    assert isinstance(trained_clt.sae, CrossLayerDictionary)
    assert all(bool(W.detach().any()) for W in trained_clt.sae.W_cross)
    assert not torch.equal(killed["members"]["clt"]["sae"]["W_cross.0"], resumed["members"]["clt"]["sae"]["W_cross.0"])
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < row["l0"] < 3 * WIDTH for row in rows)

    straight_log, resumed_log = ((tmp_path / run / "metrics.jsonl").read_text() for run in ("straight", "resumed"))
    # A clean stop also logs the step it stopped at (26); otherwise the logs are the same, no duplicates.
    assert [row for row in resumed_log.splitlines() if '"step": 26,' not in row] == straight_log.splitlines()


@pytest.mark.parametrize("target_scale", ["input", "own"])
def test_targets_divided_by_their_own_scale_fold_back_to_the_raw_function(tmp_path: Path, target_scale: str) -> None:
    """Whichever scale the targets were divided by, the raw-space dictionary maps raw inputs to raw targets as
    the trained one did: ŷ_raw = C_target · ŷ(x_raw / C_in), for a CLT and a single-layer transcoder."""
    from saescope.dictionaries.folder import read_trained_sae

    arrays = multi_layer_sites(512)
    scaled = {site: x * (40.0 if site.kind is SiteKind.MLP else 1.0) for site, x in arrays.items()}  # big outputs
    source = ArrayActivations(scaled)
    clt, _ = specs()
    single = SAESpec("tc", Site(1, SiteKind.MLP_IN), DictionaryConfig(d_in=D, width=WIDTH, d_out=D_OUT,
                     apply_pre_encoder_bias=False, threshold_parameterisation="raw", lambda_warmup_steps=0),
                     lr=4e-3, target_l0=4.0, site_out=Site(1, SiteKind.MLP))  # fmt: skip
    train_config = TrainConfig(total_tokens=8 * BATCH, batch_size=BATCH, target_scale=target_scale, progress=False)
    trained = Trainer([clt, single], source, train_config, tmp_path).run()
    scales = source.norm_scales
    for spec, result in zip((clt, single), trained, strict=True):
        entry = read_trained_sae(result.folder)
        x_raw = torch.cat([scaled[site][:64] for site in spec.input_sites], dim=-1)
        target_scales = spec.output_sites if target_scale == "own" else spec.input_sites
        x_in = torch.cat([scaled[s][:64] / scales[s] for s in spec.input_sites], dim=-1)
        with torch.no_grad():
            trained_BY = entry.training_space()(x_in).reconstruction
            expected_BY = torch.cat(
                [
                    part * scales[site]
                    for part, site in zip(trained_BY.split(D_OUT, dim=-1), target_scales, strict=True)
                ],
                dim=-1,
            )
            torch.testing.assert_close(entry.raw_space()(x_raw).reconstruction, expected_BY, rtol=1e-4, atol=1e-3)
