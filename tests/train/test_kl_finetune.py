"""End-to-end KL finetuning (method §7.6): the loss formula, the constant α, and gradients through a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saescope.atomic import verify_checksum
from saescope.data.arrays import ArrayActivations
from saescope.data.corpus import CorpusConfig
from saescope.data.windows import WindowBatch, special_token_ids, special_token_mask
from saescope.dictionaries.folder import read_suite
from saescope.models.hooks import capture
from saescope.models.loading import load_model
from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig, JumpReLU, build_dictionary
from saescope.train import SAESpec, TrainConfig, Trainer
from saescope.train.kl_finetune import (
    ALPHA_EPSILON,
    KLFinetuneConfig,
    finetune_trained_folder,
    kl_finetune,
    kl_finetune_loss,
    spliced_kl_step,
)


@pytest.mark.parametrize("beta", [0.0, 0.5, 3.0])
def test_the_loss_is_the_formula(beta: float) -> None:
    mse, kl = torch.tensor(0.8), torch.tensor(0.05)
    alpha = 0.8 / (0.05 + ALPHA_EPSILON)
    expected = (0.8 + alpha * beta * 0.05) / (1 + beta)
    assert float(kl_finetune_loss(mse, kl, beta)) == pytest.approx(expected, rel=1e-6)


def test_alpha_carries_no_gradient() -> None:
    mse = torch.tensor(0.8, requires_grad=True)
    kl = torch.tensor(0.05, requires_grad=True)
    beta = 2.0
    kl_finetune_loss(mse, kl, beta).backward()  # type: ignore[no-untyped-call]
    alpha = 0.8 / (0.05 + ALPHA_EPSILON)
    # Were α differentiated, ∂L/∂MSE would be (1 + β)/(1 + β) = 1 and ∂L/∂KL would be 0.
    assert mse.grad is not None
    assert kl.grad is not None
    assert float(mse.grad) == pytest.approx(1 / (1 + beta))
    assert float(kl.grad) == pytest.approx(alpha * beta / (1 + beta), rel=1e-6)


def test_a_negative_beta_is_refused() -> None:
    with pytest.raises(ValueError, match="beta"):
        kl_finetune_loss(torch.tensor(1.0), torch.tensor(1.0), -1.0)


def test_the_kl_reaches_the_dictionary_through_the_frozen_model(tiny_model_dir: Path, text_corpus: Path) -> None:
    torch.manual_seed(0)
    loaded = load_model(str(tiny_model_dir))
    site = Site(1, SiteKind.RES)
    sae = build_dictionary(
        DictionaryConfig(d_in=32, width=64, threshold_parameterisation="raw", lambda_warmup_steps=0),
        generator=torch.Generator().manual_seed(0),
    )
    ids_BT = torch.randint(3, 90, (2, 16), generator=torch.Generator().manual_seed(1))
    ids_BT[:, 0] = loaded.tokenizer.bos_token_id
    total, measured = spliced_kl_step(loaded, sae, site, norm_scale=1.0, windows=WindowBatch.of_ids(ids_BT), beta=1.0)
    total.backward()  # type: ignore[no-untyped-call]
    assert measured.kl > 0
    assert measured.mse > 0
    assert sae.W_enc_DF.grad is not None
    assert sae.W_enc_DF.grad.abs().sum() > 0
    assert all(p.grad is None for p in loaded.model.parameters())
    # β = 0 is plain reconstruction: the model's KL then sends no gradient into the encoder's KL path.
    sae.zero_grad(set_to_none=True)
    mse_only, _ = spliced_kl_step(loaded, sae, site, norm_scale=1.0, windows=WindowBatch.of_ids(ids_BT), beta=0.0)
    expected = sae.loss(_site_tokens(loaded, site, ids_BT)).total
    assert float(mse_only.detach()) == pytest.approx(float(expected.detach()), rel=1e-4)

    config = KLFinetuneConfig(tokens=120, beta=1.0, lr=1e-3, batch_windows=2, progress=False)
    history = kl_finetune(loaded, sae, site, 1.0, CorpusConfig(source=str(text_corpus), context_size=16), config)
    assert len(history) >= 4
    assert all(step.kl >= 0 for step in history)


def _site_tokens(loaded: object, site: Site, ids_BT: torch.Tensor) -> torch.Tensor:
    from saescope.data.windows import special_token_ids
    from saescope.models.hooks import capture

    acts = capture(loaded.model, [site], ids_BT)[site]  # type: ignore[attr-defined]
    keep_BT = special_token_mask(ids_BT, special_token_ids(loaded.tokenizer))  # type: ignore[attr-defined]
    return acts[keep_BT].float()


def test_the_threshold_controller_keeps_steering_theta_during_the_kl_phase(
    tiny_model_dir: Path, text_corpus: Path
) -> None:
    """A target far above the L0 halves θ every step (the controller's clamp); without one θ barely moves."""
    loaded = load_model(str(tiny_model_dir))
    site = Site(1, SiteKind.RES)
    dictionary = DictionaryConfig(
        d_in=32, width=64, threshold_parameterisation="raw", threshold_init=0.5, lambda_warmup_steps=0
    )
    config = KLFinetuneConfig(tokens=120, beta=1.0, lr=1e-4, batch_windows=2, progress=False)
    corpus = CorpusConfig(source=str(text_corpus), context_size=16)
    thetas = {}
    for steered in (False, True):
        sae = build_dictionary(dictionary, generator=torch.Generator().manual_seed(0))
        assert isinstance(sae, JumpReLU)
        history = kl_finetune(
            loaded, sae, site, 1.0, corpus, config,
            target_l0=1e4 if steered else None, threshold_controller_gain=0.5,
        )  # fmt: skip
        thetas[steered] = float(sae.threshold_F.detach().mean())
    assert len(history) >= 4
    assert thetas[False] == pytest.approx(0.5, abs=0.01)
    assert thetas[True] == pytest.approx(0.5 * 0.5 ** len(history), rel=0.05)


def test_positions_a_chat_corpus_excludes_are_masked_and_the_model_reads_plain_ids(tiny_model_dir: Path) -> None:
    """A chat corpus's windows carry the positions its mask policy excludes beside the ids: the step must drop
    them, and the model reads the ids as they are."""
    loaded = load_model(str(tiny_model_dir))
    site = Site(1, SiteKind.RES)
    sae = build_dictionary(
        DictionaryConfig(d_in=32, width=64, threshold_parameterisation="raw", lambda_warmup_steps=0),
        generator=torch.Generator().manual_seed(0),
    )
    ids_BT = torch.randint(3, 90, (2, 16), generator=torch.Generator().manual_seed(1))
    ids_BT[:, 0] = loaded.tokenizer.bos_token_id
    chat_keep_BT = torch.ones_like(ids_BT, dtype=torch.bool)
    chat_keep_BT[:, 1:5] = False  # e.g. a user-turn prefix
    windows = WindowBatch(ids_BT, chat_keep_BT)
    total, measured = spliced_kl_step(loaded, sae, site, norm_scale=1.0, windows=windows, beta=0.0)
    assert measured.kl >= 0
    keep_BT = windows.kept_positions(special_token_ids(loaded.tokenizer))
    assert int(keep_BT.sum()) == 2 * (16 - 5)
    acts_BTD = capture(loaded.model, [site], ids_BT)[site]
    expected = sae.loss(acts_BTD[keep_BT].float()).total
    assert float(total.detach()) == pytest.approx(float(expected.detach()), rel=1e-4)


def test_a_finetuned_folder_is_written_with_its_checksum(
    tiny_model_dir: Path, text_corpus: Path, tmp_path: Path
) -> None:
    loaded = load_model(str(tiny_model_dir))
    site = Site(1, SiteKind.RES)
    x_ND = capture(loaded.model, [site], torch.randint(3, 90, (16, 16), generator=torch.Generator().manual_seed(2)))
    dictionary = DictionaryConfig(d_in=32, width=64, threshold_parameterisation="raw", lambda_warmup_steps=0)
    spec = SAESpec("res", site, dictionary)
    run = tmp_path / "run"
    train = TrainConfig(total_tokens=512, batch_size=128, lr_warmup_steps=1, progress=False)
    Trainer([spec], ArrayActivations({site: x_ND[site].reshape(-1, 32)}), train, run).run()
    folder = run / "saes" / "res"
    before = (folder / "sae.safetensors").read_bytes()
    corpus = CorpusConfig(source=str(text_corpus), context_size=16)
    kl_config = KLFinetuneConfig(tokens=40, batch_windows=2, progress=False)
    finetune_trained_folder(loaded, folder, folder, corpus, kl_config)
    assert (folder / "sae.safetensors").read_bytes() != before
    assert verify_checksum(folder / "sae.safetensors", "") is True
    (entry,) = read_suite(run)
    entry.raw_space()  # read back without a checksum error
