"""The least-squares decoder refit: the closed form, what it keeps, and the trainer's final phase."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer import RES, config, jumprelu_spec, sparse_data

from saescope.data.arrays import ArrayActivations
from saescope.models.sites import Site
from saescope.sae import DictionaryConfig, SparseDictionary, build_dictionary
from saescope.train import Trainer
from saescope.train import trainer as trainer_module
from saescope.train.elements import DecoderRefitAtEnd
from saescope.train.refit import RIDGE, DecoderRefit, accumulator_bytes, refit_passes, refittable
from saescope.train.trainer import return_freed_memory

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, D_OUT, WIDTH = 12, 10, 24


def trained_like(architecture: str, *, transcoder: bool = False, skip: bool = False) -> SparseDictionary:
    """A dictionary with random weights whose codes fire on a few latents per token, like a trained one."""
    config = DictionaryConfig(
        d_in=D_IN, d_out=D_OUT if transcoder else None, width=WIDTH, architecture=architecture,
        k=4 if architecture == "topk" else None, skip=skip, apply_pre_encoder_bias=not transcoder,
    )  # fmt: skip
    sae = build_dictionary(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc_F.fill_(-0.8)  # JumpReLU θ starts at 0.001, ReLU at 0: a negative bias makes the codes sparse
        sae.b_dec_D.normal_(generator=torch.Generator().manual_seed(1))
        if skip:
            sae.W_skip_DD.normal_(std=0.1, generator=torch.Generator().manual_seed(2))
    return sae


def data(n: int, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(n, D_IN, generator=generator) + 0.5
    return x, torch.tanh(x @ torch.randn(D_IN, d_out, generator=generator)) + 0.3


def refit(sae: SparseDictionary, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    accumulator = DecoderRefit(sae)
    for start in range(0, x.shape[0], 500):  # in batches, as the trainer feeds it
        accumulator.update(x[start : start + 500], y[start : start + 500])
    return accumulator.solve_()


@pytest.mark.parametrize(
    ("architecture", "transcoder", "skip"),
    [("jumprelu", False, False), ("topk", False, False), ("relu", False, False), ("jumprelu", True, True)],
)
def test_the_refit_is_the_ridge_least_squares_decoder_and_keeps_the_codes(
    architecture: str, transcoder: bool, skip: bool
) -> None:
    sae = trained_like(architecture, transcoder=transcoder, skip=skip)
    x, y = data(2_000, sae.config.d_target) if transcoder else (data(2_000, D_IN)[0],) * 2
    with torch.no_grad():
        codes_before = sae.encode(x)
        z = torch.cat([codes_before, torch.ones(x.shape[0], 1)], dim=1).double()
        target = y - (x @ sae.W_skip_DD if skip else 0)
        trained = torch.cat([sae.W_dec_FD, sae.b_dec_D[None]]).double()
        gram = z.T @ z
        ridge = RIDGE * float(gram.diagonal()[:WIDTH].mean())
        expected = torch.linalg.solve(
            gram + ridge * torch.eye(WIDTH + 1).double(), z.T @ target.double() + ridge * trained
        )
        expected_y = (z @ expected).float() + (x @ sae.W_skip_DD if skip else 0)
        old_error = float((sae(x).reconstruction - y).square().sum())
    before, after = refit(sae, x, y)
    with torch.no_grad():
        out = sae(x)
    assert torch.equal(out.codes != 0, codes_before != 0)  # the same latents fire: L0 and θ's choices are kept
    torch.testing.assert_close(out.reconstruction, expected_y, atol=1e-4, rtol=1e-4)
    new_error = float((out.reconstruction - y).square().sum())
    assert new_error < 0.9 * old_error
    variance = float((y - y.mean(0)).square().sum())
    assert before == pytest.approx(old_error / variance, rel=1e-3)  # from the normal equations alone
    assert after == pytest.approx(new_error / variance, rel=1e-3)
    if sae.per_latent_code_scaling:
        torch.testing.assert_close(sae.W_dec_FD.norm(dim=-1), torch.ones(WIDTH))


def test_batchtopk_is_refit_on_its_inference_codes_and_keeps_its_threshold() -> None:
    sae = trained_like("topk")
    batchtopk = build_dictionary(sae.config.replace(architecture="batchtopk"))
    batchtopk.load_state_dict({**sae.state_dict(), "inference_threshold": torch.tensor(0.5)})
    batchtopk.train()  # as the trainer holds it
    x = data(1_000, D_IN)[0]
    refit(batchtopk, x, x)
    assert batchtopk.training
    assert float(batchtopk.inference_threshold) == 0.5
    with torch.no_grad():
        pre = batchtopk.pre_activations(x)
        batchtopk.eval()
        torch.testing.assert_close(batchtopk.encode(x), pre * (pre > 0.5))


def test_a_latent_that_never_fires_keeps_its_decoder_row() -> None:
    sae = trained_like("jumprelu")
    with torch.no_grad():
        sae.b_enc_F[5] = -1e6
    x = data(1_000, D_IN)[0]
    row = sae.W_dec_FD[5].detach().clone()
    refit(sae, x, x)
    torch.testing.assert_close(sae.W_dec_FD[5], row)


def test_passes_keep_the_normal_equations_under_the_budget() -> None:
    saes = [trained_like("jumprelu") for _ in range(5)]
    size = accumulator_bytes(saes[0])
    assert refit_passes(saes, budget_bytes=2 * size) == [[0, 1], [2, 3], [4]]
    assert refit_passes(saes, budget_bytes=size // 2) == [[0], [1], [2], [3], [4]]  # each alone, never skipped
    matryoshka = build_dictionary(DictionaryConfig(d_in=D_IN, width=WIDTH, matryoshka_prefixes=(8, 24)))
    assert refittable(saes[0])
    assert not refittable(matryoshka)


def test_the_trainer_refits_once_at_the_end_and_a_resumed_run_saves_the_same(tmp_path: Path) -> None:
    source = ArrayActivations({RES: sparse_data(4_000)[0]})
    plain = Trainer([jumprelu_spec()], source, config(30), tmp_path / "plain").run()[0]
    refit_run = Trainer([jumprelu_spec()], source, config(30, decoder_refit_tokens=2_048), tmp_path / "refit")
    (trained,) = refit_run.run()
    metrics = json.loads((tmp_path / "refit" / "saes" / "jr" / "config.json").read_text())["final_batch_metrics"]
    assert metrics["refit_fvu"] < metrics["refit_fvu_before"]
    x = sparse_data(2_000, seed=1)[0] / trained.norm_scale
    with torch.no_grad():
        assert torch.equal(trained.sae.encode(x) != 0, plain.sae.encode(x) != 0)  # the same codes fire
        errors = [float((sae(x).reconstruction - x).square().sum()) for sae in (plain.sae, trained.sae)]
    assert errors[1] < errors[0]  # on held-out tokens too
    # Run again on the finished folder: the checkpoint says the refit is done, so nothing changes.
    (again,) = Trainer([jumprelu_spec()], source, config(30, decoder_refit_tokens=2_048), tmp_path / "refit").run()
    for key, value in trained.sae.state_dict().items():
        assert torch.equal(value, again.sae.state_dict()[key]), key


class PassCountingSource(ArrayActivations):
    """An in-memory source that records how many of its passes over the data are open at once."""

    def __init__(self, acts: dict[Site, torch.Tensor]) -> None:
        super().__init__(acts)
        self.open_passes = 0
        self.most_open = 0

    def batches(self, batch_size: int, **kwargs: Any) -> Iterator[dict[Site, torch.Tensor]]:
        self.open_passes += 1
        self.most_open = max(self.most_open, self.open_passes)
        try:
            yield from super().batches(batch_size, **kwargs)
        finally:
            self.open_passes -= 1


def test_the_training_pass_is_closed_and_its_memory_returned_before_the_refit_reads_the_data_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A streamed source holds a shuffle buffer and prefetched forwards per open pass: two at once doubled it.
    source = PassCountingSource({RES: sparse_data(4_000)[0]})
    open_when_returned: list[int] = []
    monkeypatch.setattr(trainer_module, "return_freed_memory", lambda: open_when_returned.append(source.open_passes))
    Trainer([jumprelu_spec()], source, config(10, decoder_refit_tokens=1_024), tmp_path).run()
    assert source.most_open == 1
    assert open_when_returned == [0]  # once, after the training pass closed


def test_returning_freed_memory_is_safe_to_call() -> None:
    return_freed_memory()  # glibc's malloc_trim where there is one, nothing elsewhere


def test_a_run_stopped_before_its_last_step_does_not_refit(tmp_path: Path) -> None:
    source = ArrayActivations({RES: sparse_data(4_000)[0]})
    trainer = Trainer([jumprelu_spec()], source, config(30, decoder_refit_tokens=2_048), tmp_path)
    trainer.run(max_steps=10)
    assert not next(e for e in trainer.elements if isinstance(e, DecoderRefitAtEnd)).done


def test_a_dictionary_too_wide_for_a_refit_pass_keeps_its_decoder_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from saescope.train import refit as refit_module

    monkeypatch.setattr(refit_module, "PASS_MEMORY_BYTES", 100)  # smaller than any dictionary's equations
    source = ArrayActivations({RES: sparse_data(4_000)[0]})
    plain = Trainer([jumprelu_spec()], source, config(30), tmp_path / "plain").run()[0]
    with caplog.at_level("WARNING"):
        (wide,) = Trainer([jumprelu_spec()], source, config(30, decoder_refit_tokens=2_048), tmp_path / "wide").run()
    assert "jr keeps its trained decoder" in caplog.text
    for key, value in plain.sae.state_dict().items():
        assert torch.equal(value, wide.sae.state_dict()[key]), key
