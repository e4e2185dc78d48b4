"""The trainer on synthetic data made from a known sparse dictionary (fast, single-threaded)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from saescope.data.activations import SiteBatch
from saescope.data.arrays import ArrayActivations
from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig
from saescope.train import SAESpec, TrainConfig, Trainer, TrainingDivergedError, learning_rate

D, N_ATOMS, P_ACTIVE = 32, 48, 4 / 48
RES, ATT = Site(0, SiteKind.RES), Site(0, SiteKind.ATT)


pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x = Σ a_i d_i with ~4 of 48 unit atoms active per token, plus a constant offset (a mean to learn)."""
    generator = torch.Generator().manual_seed(seed)
    atoms_ND = torch.nn.functional.normalize(
        torch.randn(N_ATOMS, D, generator=torch.Generator().manual_seed(99)), dim=-1
    )
    mask_BN = (torch.rand(n, N_ATOMS, generator=generator) < P_ACTIVE).float()
    magnitudes_BN = torch.rand(n, N_ATOMS, generator=generator) + 0.5
    return (mask_BN * magnitudes_BN) @ atoms_ND * 3.0 + 0.5, atoms_ND


def jumprelu_spec(name: str = "jr", **kwargs: object) -> SAESpec:
    dictionary = DictionaryConfig(
        d_in=D, width=64, threshold_parameterisation="raw", lambda_warmup_steps=0, l0_coefficient=3e-3
    )
    defaults: dict[str, object] = {"lr": 4e-3, "target_l0": 4.0, "decoder_bias_init": "mean"}
    defaults.update(kwargs)
    return SAESpec(name, RES, dictionary, **defaults)  # type: ignore[arg-type]


def config(steps: int, **kwargs: object) -> TrainConfig:
    defaults: dict[str, object] = {"batch_size": 256, "lr_warmup_steps": 20, "checkpoint_every_steps": 25}
    defaults.update(kwargs)
    return TrainConfig(total_tokens=steps * 256, progress=False, **defaults)  # type: ignore[arg-type]


def test_recovers_a_known_dictionary_at_the_target_l0(tmp_path: Path) -> None:
    x_ND, atoms_ND = sparse_data(40_000)
    source = ArrayActivations({RES: x_ND})
    (trained,) = Trainer([jumprelu_spec()], source, config(1200), tmp_path).run()
    sae = trained.sae
    cos_NF = atoms_ND @ sae.W_dec_FD.detach().T
    assert cos_NF.max(dim=1).values.mean() >= 0.9
    torch.testing.assert_close(sae.W_dec_FD.norm(dim=-1), torch.ones(64))
    held_out, _ = sparse_data(8_000, seed=1)
    with torch.no_grad():
        l0 = (sae.encode(held_out / trained.norm_scale) != 0).float().sum(-1).mean().item()
    assert l0 == pytest.approx(4.0, rel=0.1)
    saved = json.loads((tmp_path / "saes" / "jr" / "config.json").read_text())
    assert saved["site"] == "layer_0/res"
    assert saved["norm_scale"] == pytest.approx(trained.norm_scale)
    assert (tmp_path / "saes" / "jr" / "sae.safetensors").stat().st_size > 0


def test_many_dictionaries_of_several_kinds_train_from_one_stream(tmp_path: Path) -> None:
    x_ND, _ = sparse_data(4_000)
    source = ArrayActivations({RES: x_ND, ATT: torch.cat([x_ND, -x_ND], dim=1)})
    specs = [
        jumprelu_spec("jr"),
        SAESpec("topk", ATT, DictionaryConfig(d_in=2 * D, width=32, architecture="topk", k=4), lr=4e-3),
        SAESpec("relu", RES, DictionaryConfig(d_in=D, width=32, architecture="relu", lambda_warmup_steps=0), lr=4e-3),
    ]
    trained = Trainer(specs, source, config(30), tmp_path).run()
    assert [t.name for t in trained] == ["jr", "topk", "relu"]
    assert trained[1].norm_scale == pytest.approx(trained[0].norm_scale * 2**0.5, rel=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {row["name"] for row in rows} == {"jr", "topk", "relu"}
    assert all(row["l0"] <= 4 + 1e-6 for row in rows if row["name"] == "topk")


def state_of(trainer_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(trainer_dir / "checkpoint.pt", weights_only=False)["members"]["jr"]["sae"]


def test_kill_and_resume_gives_bit_identical_weights(tmp_path: Path) -> None:
    x_ND, _ = sparse_data(3_000)  # ~11.7 batches per epoch: the run crosses epochs
    source = ArrayActivations({RES: x_ND})
    Trainer([jumprelu_spec()], source, config(40), tmp_path / "straight").run()
    Trainer([jumprelu_spec()], source, config(40), tmp_path / "resumed").run(max_steps=25)  # "killed" at 25
    Trainer([jumprelu_spec()], source, config(40), tmp_path / "resumed").run()
    straight, resumed = state_of(tmp_path / "straight"), state_of(tmp_path / "resumed")
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    straight_log, resumed_log = ((tmp_path / name / "metrics.jsonl").read_text() for name in ("straight", "resumed"))
    # The killed run also logged the step it stopped at (25); otherwise the logs are the same, no duplicates.
    assert [row for row in resumed_log.splitlines() if '"step": 25,' not in row] == straight_log.splitlines()


class PoisonedSource(ArrayActivations):
    """Yields NaN activations from the 28th batch of each epoch on."""

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, skip_batches: int = 0) -> Iterator[SiteBatch]:
        for index, batch in enumerate(super().batches(batch_size, seed=seed, epoch=epoch), start=0):
            if index >= skip_batches:
                yield {site: x * float("nan") for site, x in batch.items()} if index >= 27 else batch


def test_nan_activations_name_the_step_and_site_and_keep_the_checkpoint(tmp_path: Path) -> None:
    source = PoisonedSource({RES: sparse_data(256 * 40)[0]})
    with pytest.raises(TrainingDivergedError, match=r"step 27: the activations of layer_0/res hold nan"):
        Trainer([jumprelu_spec()], source, config(60), tmp_path).run()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 25
    assert all(torch.isfinite(v).all() for v in checkpoint["members"]["jr"]["sae"].values())


def test_other_settings_refuse_the_old_checkpoint(tmp_path: Path) -> None:
    source = ArrayActivations({RES: sparse_data(2_000)[0]})
    Trainer([jumprelu_spec()], source, config(5), tmp_path).run()
    with pytest.raises(ValueError, match="other settings"):
        Trainer([jumprelu_spec(lr=1e-3)], source, config(5), tmp_path).run()


def test_learning_rate_warmup_and_decay() -> None:
    kwargs = {"peak": 1.0, "warmup_steps": 100, "warmup_start_fraction": 0.1, "total_steps": 1000}
    assert learning_rate(0, decay_fraction=0.0, **kwargs) == pytest.approx(0.1)
    assert learning_rate(50, decay_fraction=0.0, **kwargs) == pytest.approx(0.55)
    assert learning_rate(100, decay_fraction=0.0, **kwargs) == pytest.approx(1.0)
    assert learning_rate(999, decay_fraction=0.0, **kwargs) == pytest.approx(1.0)
    assert learning_rate(900, decay_fraction=0.2, **kwargs) == pytest.approx(0.5)


def test_a_run_resumed_after_its_last_checkpoint_saves_its_final_metrics(tmp_path: Path) -> None:
    """Killed after the final checkpoint but before the dictionaries were written: resuming writes them whole."""
    source = ArrayActivations({RES: sparse_data(2_000)[0]})
    (finished,) = Trainer([jumprelu_spec()], source, config(25), tmp_path / "a").run()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint.pt").write_bytes((tmp_path / "a" / "checkpoint.pt").read_bytes())
    (resumed,) = Trainer([jumprelu_spec()], source, config(25), tmp_path / "b").run()
    assert resumed.final_metrics == finished.final_metrics
    saved = json.loads((tmp_path / "b" / "saes" / "jr" / "config.json").read_text())
    assert saved["final_batch_metrics"]["l0"] == finished.final_metrics["l0"]
