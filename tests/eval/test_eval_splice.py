"""Delta LM loss and the suite evaluation on a tiny Gemma 3 with a tiny text corpus."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from saescope.data.corpus import CorpusConfig
from saescope.data.windows import special_token_mask
from saescope.dictionaries.sites import DictionarySites
from saescope.eval import EvalConfig, EvalTarget, evaluate
from saescope.eval.metrics import paired_difference
from saescope.eval.splice import spliced_losses
from saescope.models.loading import load_model
from saescope.models.predictions import Predictions, clean_log_probs, final_hidden, kl_to_clean
from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig, SparseDictionary, build_dictionary

SITE = Site(1, SiteKind.RES)


def identity_sae(d: int) -> SparseDictionary:
    """ReLU dictionary with codes [relu(x), relu(-x)] and decoder [I; -I]: reconstructs x exactly."""
    sae = build_dictionary(DictionaryConfig(d_in=d, width=2 * d, architecture="relu", apply_pre_encoder_bias=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc_DF.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec_FD.copy_(torch.cat([eye, -eye], dim=0))
    return sae.eval()


def zero_sae(d: int) -> SparseDictionary:
    sae = build_dictionary(DictionaryConfig(d_in=d, width=4, architecture="relu", apply_pre_encoder_bias=False))
    with torch.no_grad():
        sae.W_dec_FD.zero_()
    return sae.eval()


def windows() -> torch.Tensor:
    ids = torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    ids[1, 6] = 1  # an EOS inside the window
    return ids


def test_chunked_cross_entropy_equals_the_full_logits(tiny_gemma: torch.nn.Module) -> None:
    ids = windows()
    keep = special_token_mask(ids, (0, 1, 2))
    predictions = Predictions.select(ids, keep)
    ce, _ = clean_log_probs(tiny_gemma, ids, predictions, chunk=3)
    with torch.no_grad():
        logits = tiny_gemma(input_ids=ids).logits  # includes Gemma 2's final soft-capping
    expected = torch.nn.functional.cross_entropy(
        logits[predictions.rows_B, predictions.cols_T], predictions.targets_N, reduction="none"
    )
    torch.testing.assert_close(ce, expected, rtol=1e-5, atol=1e-5)
    # Predictions from or of a special token (BOS input at 0 is fine, EOS at 6 is not) are not counted.
    counted = set(zip(predictions.rows_B.tolist(), predictions.cols_T.tolist(), strict=True))
    assert (1, 5) not in counted
    assert (1, 6) not in counted
    assert (0, 0) not in counted  # BOS input


def test_identity_gives_zero_delta_and_zero_gives_the_ablation_loss(tiny_gemma: torch.nn.Module) -> None:
    ids = windows()
    keep = special_token_mask(ids, (0, 1, 2))
    predictions = Predictions.select(ids, keep)
    ce_clean, log_probs = clean_log_probs(tiny_gemma, ids, predictions)
    identity = identity_sae(32)
    ce_id, kl_id = spliced_losses(
        tiny_gemma, ids, keep, SITE, lambda x: identity(x).reconstruction, predictions, log_probs
    )
    torch.testing.assert_close(ce_id, ce_clean, rtol=0, atol=1e-6)
    assert kl_id is not None
    assert kl_id.abs().max() < 1e-2  # only the bfloat16 rounding of the stored clean log-probs
    zero = zero_sae(32)
    ce_zero_sae, _ = spliced_losses(tiny_gemma, ids, keep, SITE, lambda x: zero(x).reconstruction, predictions)
    ce_ablation, _ = spliced_losses(tiny_gemma, ids, keep, SITE, torch.zeros_like, predictions)
    torch.testing.assert_close(ce_zero_sae, ce_ablation, rtol=0, atol=1e-6)
    assert (ce_ablation - ce_clean).abs().max() > 1e-3


def test_bos_is_never_spliced(tiny_gemma: torch.nn.Module) -> None:
    ids = windows()
    keep = special_token_mask(ids, (0, 1, 2))
    seen: list[torch.Tensor] = []

    def record_and_zero(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return torch.zeros_like(x)

    predictions = Predictions.select(ids, keep)
    spliced_losses(tiny_gemma, ids, keep, Site(0, SiteKind.RES), record_and_zero, predictions)
    with torch.no_grad():
        clean = final_hidden(tiny_gemma, ids)
    from saescope.models.hooks import splice

    with torch.no_grad(), splice(tiny_gemma, {Site(0, SiteKind.RES): lambda x: torch.where(keep[..., None], 0 * x, x)}):
        spliced = final_hidden(tiny_gemma, ids)
    # Position 0 (BOS) only sees itself: untouched by the splice, its final hidden state is the clean one.
    torch.testing.assert_close(spliced[:, 0], clean[:, 0], rtol=0, atol=0)
    assert (spliced[:, 1] - clean[:, 1]).abs().max() > 1e-4


def test_evaluate_writes_metrics_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    rng = random.Random(0)
    documents = [{"text": " ".join(f"w{rng.randrange(90)}" for _ in range(30))} for _ in range(60)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents))
    corpus = CorpusConfig(source=str(tmp_path / "docs.jsonl"), context_size=16, heldout_fraction=0.5)
    folder = tmp_path / "sae"
    folder.mkdir()
    targets = [
        EvalTarget("identity", DictionarySites(SITE), identity_sae(32), folder),
        EvalTarget("zero", DictionarySites(SITE), zero_sae(32)),
    ]
    config = EvalConfig(
        tokens=200, loss_windows=3, loss_position_stride=2, batch_windows=2, keep_prediction_deltas=True
    )
    results = evaluate(loaded, targets, corpus, config, progress=False)
    identity, zero = results["identity"], results["zero"]
    identity_N = identity["lm_loss"]["delta_lm_loss_per_prediction"]
    zero_N = zero["lm_loss"]["delta_lm_loss_per_prediction"]
    assert len(identity_N) == len(zero_N) == identity["lm_loss"]["loss_n_predictions"]
    difference, stderr = paired_difference(zero_N, identity_N)
    assert difference == pytest.approx(zero["lm_loss"]["delta_lm_loss"] - identity["lm_loss"]["delta_lm_loss"])
    assert 0 < stderr <= zero["lm_loss"]["delta_lm_loss_stderr"] * 1.01
    zero_kl_N = zero["lm_loss"]["kl_per_prediction"]
    assert len(zero_kl_N) == len(zero_N)
    assert sum(zero_kl_N) / len(zero_kl_N) == pytest.approx(zero["lm_loss"]["kl_clean_to_spliced"], rel=1e-5)
    # An exact splice leaves only the bfloat16 rounding of the stored clean log-probabilities: a true KL, >= 0.
    identity_kl_N = identity["lm_loss"]["kl_per_prediction"]
    assert min(identity_kl_N) >= -1e-7
    assert max(identity_kl_N) < 0.01 * zero["lm_loss"]["kl_clean_to_spliced"]
    assert identity["reconstruction"]["fvu"] == 0.0
    assert identity["reconstruction"]["n_tokens"] == 200
    assert identity["lm_loss"]["delta_lm_loss"] == pytest.approx(0.0, abs=1e-6)
    assert identity["lm_loss"]["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert zero["lm_loss"]["ce_loss_spliced"] == pytest.approx(zero["lm_loss"]["ce_loss_zero_ablation"], abs=1e-6)
    assert zero["lm_loss"]["loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    written = json.loads((folder / "metrics.json").read_text())
    assert written["site"] == "layer_1/res"
    assert written["dataset"]["split"] == "heldout"
    assert "never spliced" in written["mask_policy"]
    assert len(written["reconstruction"]["fvu_by_position"]) == 16


def test_kl_to_clean_is_a_true_kl_after_bfloat16_rounding() -> None:
    generator = torch.Generator().manual_seed(0)
    clean_NV = torch.log_softmax(3 * torch.randn(64, 5000, generator=generator), dim=-1)
    other_NV = torch.log_softmax(clean_NV + 0.3 * torch.randn(64, 5000, generator=generator), dim=-1)
    expected_N = (clean_NV.exp() * (clean_NV - other_NV)).sum(-1)
    measured_N = kl_to_clean(clean_NV.to(torch.bfloat16), other_NV)
    assert measured_N.dtype == torch.float32
    assert torch.allclose(measured_N, expected_N, rtol=0.02, atol=1e-4)
    exact_N = kl_to_clean(clean_NV.to(torch.bfloat16), clean_NV)  # rounding alone: tiny and never negative
    assert exact_N.min() >= -1e-7  # float32 summation only; unrenormalised it reaches -1e-3 here
    assert exact_N.max() < 0.01 * expected_N.mean()
