"""`--init-from`: a trained (or released) dictionary continues training on new activations (method §7.6).

The parent is trained on "PT" activations and continued on "IT" activations with another norm, so the new
run's scale C differs from the parent's: the first step must still see exactly the parent's function."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope.cli import main
from saescope.data.arrays import ArrayActivations
from saescope.models.sites import Site, SiteKind
from saescope.release import export_release, load_sae
from saescope.release.common import ReleaseParams
from saescope.release.gemmascope import write_gemmascope_npz
from saescope.sae import DictionaryConfig, JumpReLU, build_dictionary, single_layer
from saescope.train import SAESpec, TrainConfig, Trainer
from saescope.train.elements import DimensionGains
from saescope.train.init_from import unfold_into_
from saescope.train.verdict import IMPLAUSIBLE_EXIT_CODE

SITE = Site(0, SiteKind.RES)
D, WIDTH, BATCH = 16, 32, 256
L0_COEFFICIENT = 0.01


def activations(seed: int, scale: float, shift: float, n: int = 4096) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(8, D))
    codes = rng.exponential(size=(n, 8)) * (rng.random(size=(n, 8)) < 0.3)
    return (scale * (codes @ basis + 0.1 * rng.normal(size=(n, D))) + shift).astype(np.float32)


def trained_jumprelu(seed: int) -> JumpReLU:
    """A training-space JumpReLU with non-trivial biases and thresholds."""
    generator = torch.Generator().manual_seed(seed)
    sae = build_dictionary(DictionaryConfig(d_in=D, width=WIDTH), generator=generator)
    assert isinstance(sae, JumpReLU)
    with torch.no_grad():
        sae.b_enc_F.copy_(0.3 * torch.randn(WIDTH, generator=generator))
        sae.b_dec_D.copy_(0.5 * torch.randn(D, generator=generator))
    sae.set_threshold_(0.05 + 0.2 * torch.rand(WIDTH, generator=generator))
    return sae


def test_unfolding_maps_a_raw_space_parent_into_training_space_exactly() -> None:
    parent = trained_jumprelu(0)
    raw = parent.fold_normalisation(2.5)
    child = build_dictionary(DictionaryConfig(d_in=D, width=WIDTH, threshold_parameterisation="log"))
    unfold_into_(child, raw, 7.0)
    x_raw = 6.0 * torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    expected, got = raw(x_raw), child(x_raw / 7.0)
    assert bool((expected.codes > 0).any())
    torch.testing.assert_close(got.reconstruction * 7.0, expected.reconstruction, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.codes * 7.0, expected.codes, rtol=1e-5, atol=1e-5)
    same_scale = build_dictionary(DictionaryConfig(d_in=D, width=WIDTH))
    unfold_into_(same_scale, raw, 2.5)  # unfolding with the scale it was folded with gives back the parameters
    for name, value in parent.state_dict().items():
        torch.testing.assert_close(same_scale.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="width 32 vs 64"):
        unfold_into_(build_dictionary(DictionaryConfig(d_in=D, width=2 * WIDTH)), raw, 1.0)


def train_parent(out: Path) -> Path:
    source = ArrayActivations({SITE: activations(0, scale=1.0, shift=0.0)})
    config = DictionaryConfig(d_in=D, width=WIDTH, l0_coefficient=L0_COEFFICIENT, lambda_warmup_steps=0)
    spec = SAESpec("pt", SITE, config, lr=1e-3, target_l0=4.0)
    Trainer([spec], source, TrainConfig(total_tokens=8 * BATCH, batch_size=BATCH, progress=False), out).run()
    return out / "saes" / "pt"


def test_first_step_loss_equals_the_parents_loss_on_the_same_batch(tmp_path: Path) -> None:
    parent_folder = train_parent(tmp_path / "pt")
    it_source = ArrayActivations({SITE: activations(1, scale=3.0, shift=1.5)})  # IT: another norm, another C
    scale = it_source.norm_scales[SITE]
    pt_scale = json.loads((parent_folder / "config.json").read_text())["norm_scale"]
    assert abs(scale / pt_scale - 1) > 0.5
    config = DictionaryConfig(d_in=D, width=WIDTH, l0_coefficient=L0_COEFFICIENT, lambda_warmup_steps=0)
    spec = SAESpec("it", SITE, config, lr=1e-3, init_from=str(parent_folder))
    train = TrainConfig(total_tokens=4 * BATCH, batch_size=BATCH, log_every_steps=1, progress=False)
    Trainer([spec], it_source, train, tmp_path / "it").run(max_steps=1)
    first = json.loads((tmp_path / "it" / "metrics.jsonl").read_text().splitlines()[0])

    # The parent's loss on the same batch, computed in raw space from its own files: squared error in units
    # of the new C (what the trainer minimises) plus λ·L0.
    x_raw = next(it_source.batches(BATCH, seed=0, epoch=0))[SITE]
    with torch.no_grad():
        out = load_sae(parent_folder).sae(x_raw)
    l0 = (out.codes > 0).double().sum(-1).mean()
    reconstruction = (x_raw.double() - out.reconstruction.double()).square().sum(-1).mean() / scale**2
    assert first["step"] == 1
    assert first["l0"] == pytest.approx(float(l0), rel=1e-6)
    assert first["loss"] == pytest.approx(float(reconstruction + L0_COEFFICIENT * l0), rel=1e-5)
    fresh = SAESpec("fresh", SITE, config, lr=1e-3)  # a fresh start's first loss is another number
    Trainer([fresh], it_source, train, tmp_path / "fresh").run(max_steps=1)
    fresh_loss = json.loads((tmp_path / "fresh" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert fresh_loss != pytest.approx(first["loss"], rel=1e-3)


def test_init_from_cli_records_the_parent_for_saescope_and_gemma_scope_parents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parent_folder = train_parent(tmp_path / "pt")
    np.save(tmp_path / "it.npy", activations(1, scale=3.0, shift=1.5))
    # an official-layout folder that does not name its site
    gs_folder = write_gemma_scope_copy(parent_folder, tmp_path / "released" / "average_l0_5")
    train = ["train", "--activations", str(tmp_path / "it.npy"), "--tokens", "512", "--batch-size", "128",
             "--set", "lr=1e-3", "--set", "lr_warmup_steps=1"]  # fmt: skip

    assert main([*train, "--init-from", str(gs_folder), "--out", str(tmp_path / "x")]) == 2
    assert "do not say which site" in capsys.readouterr().err
    assert main([*train, "--init-from", str(parent_folder), "--init-from", str(gs_folder), "--sites",
                 "layer_0/res", "--out", str(tmp_path / "it")]) in (0, IMPLAUSIBLE_EXIT_CODE)  # fmt: skip
    assert "pt starts from" in capsys.readouterr().out
    for name, parent in (("pt", parent_folder), ("average_l0_5", gs_folder)):
        loaded = load_sae(tmp_path / "it" / "saes" / name)
        assert loaded.metadata["config"]["init_from"] == str(parent.resolve())
        assert loaded.sae.config.width == WIDTH
        assert loaded.metadata["config"]["threshold_init_from_data"] is False
    export_release(tmp_path / "it", tmp_path / "release", formats=["saelens"])
    card = (tmp_path / "release" / "README.md").read_text()
    assert f"`pt` from `{parent_folder.resolve()}`" in card
    # The parent's site is the file's site; a short finetune on shifted data may end implausible (exit 3).
    assert main([*train, "--init-from", str(tmp_path / "pt"), "--out", str(tmp_path / "whole-run")]) in (
        0, IMPLAUSIBLE_EXIT_CODE,
    )  # fmt: skip
    assert (tmp_path / "whole-run" / "saes" / "pt" / "config.json").is_file()  # a run folder: all of its SAEs


def test_with_dimension_gains_the_first_step_still_sees_the_parents_function(tmp_path: Path) -> None:
    parent_folder = train_parent(tmp_path / "pt")
    it_source = ArrayActivations({SITE: activations(1, scale=3.0, shift=1.5)})
    scale = it_source.norm_scales[SITE]
    config = DictionaryConfig(d_in=D, width=WIDTH, l0_coefficient=L0_COEFFICIENT, lambda_warmup_steps=0)
    spec = SAESpec("it", SITE, config, lr=1e-3, init_from=str(parent_folder))
    train = TrainConfig(
        total_tokens=4 * BATCH, batch_size=BATCH, log_every_steps=1, progress=False, dimension_gain_power=1.0
    )
    trainer = Trainer([spec], it_source, train, tmp_path / "it")
    trainer.run(max_steps=1)
    first = json.loads((tmp_path / "it" / "metrics.jsonl").read_text().splitlines()[0])
    gain_D = next(e for e in trainer.elements if isinstance(e, DimensionGains)).gains[SITE].double()
    assert float(gain_D.max() / gain_D.min()) > 1.5  # the gains are not all alike

    x_raw = next(it_source.batches(BATCH, seed=0, epoch=0))[SITE]
    with torch.no_grad():
        out = load_sae(parent_folder).sae(x_raw)
    l0 = (out.codes > 0).double().sum(-1).mean()
    error = (x_raw.double() - out.reconstruction.double()) / (scale * gain_D)  # the trainer's weighted units
    assert first["l0"] == pytest.approx(float(l0), rel=1e-6)
    assert first["loss"] == pytest.approx(float(error.square().sum(-1).mean() + L0_COEFFICIENT * l0), rel=1e-4)


def write_gemma_scope_copy(parent_folder: Path, folder: Path) -> Path:
    """``parent_folder``'s dictionary written as a Gemma Scope 1 folder (raw space, no site recorded)."""
    folder.mkdir(parents=True)
    raw = load_sae(parent_folder).sae
    assert isinstance(raw, JumpReLU)
    write_gemmascope_npz(folder / "params.npz", ReleaseParams(
        raw.W_enc_DF.detach(), raw.W_dec_FD.detach(), raw.b_enc_F.detach(), raw.b_dec_D.detach(),
        raw.threshold_F.detach(),
    ))  # fmt: skip
    return folder


def test_a_release_format_parent_is_loaded_by_the_caller_and_handed_to_the_trainer(tmp_path: Path) -> None:
    parent_folder = train_parent(tmp_path / "pt")
    gs_folder = write_gemma_scope_copy(parent_folder, tmp_path / "released" / "average_l0_5")
    it_source = ArrayActivations({SITE: activations(1, scale=3.0, shift=1.5)})
    config = DictionaryConfig(d_in=D, width=WIDTH, l0_coefficient=L0_COEFFICIENT, lambda_warmup_steps=0)
    train = TrainConfig(total_tokens=4 * BATCH, batch_size=BATCH, log_every_steps=1, progress=False)
    spec = SAESpec("it", SITE, config, lr=1e-3, init_from=str(gs_folder))
    with pytest.raises(ValueError, match=r"not a saescope dictionary folder.*load_sae"):
        Trainer([spec], it_source, train, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    loaded = single_layer(load_sae(gs_folder).sae, "parent")
    Trainer([spec], it_source, train, tmp_path / "it", parents={str(gs_folder): loaded}).run(max_steps=1)
    from_saescope = dataclasses.replace(spec, init_from=str(parent_folder))
    Trainer([from_saescope], it_source, train, tmp_path / "same").run(max_steps=1)
    first = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0]) for run in ("it", "same")]
    assert first[0]["loss"] == pytest.approx(first[1]["loss"], rel=1e-5)  # the same parent, read either way


def test_a_transcoder_parent_is_refused(tmp_path: Path) -> None:
    x = activations(0, scale=1.0, shift=0.0)
    source = ArrayActivations({SITE: x, Site(0, SiteKind.MLP): x[:, ::-1].copy()})
    config = DictionaryConfig(d_in=D, width=WIDTH, l0_coefficient=L0_COEFFICIENT, lambda_warmup_steps=0)
    transcoder = SAESpec("tc", SITE, config, lr=1e-3, site_out=Site(0, SiteKind.MLP))
    Trainer([transcoder], source, TrainConfig(total_tokens=2 * BATCH, batch_size=BATCH, progress=False),
            tmp_path / "pt").run()  # fmt: skip
    spec = SAESpec("it", SITE, config, lr=1e-3, init_from=str(tmp_path / "pt" / "saes" / "tc"))
    with pytest.raises(ValueError, match="this is a transcoder"):
        Trainer([spec], source, TrainConfig(total_tokens=2 * BATCH, batch_size=BATCH, progress=False), tmp_path / "it")
