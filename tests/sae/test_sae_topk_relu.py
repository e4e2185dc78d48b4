"""TopK, BatchTopK and ReLU dictionaries."""

from __future__ import annotations

import pytest
import torch

from saescope.sae import BatchTopK, DictionaryConfig, ReLU, TopK

D, M, K, B = 16, 64, 5, 32


def _with_positive_bias(module: TopK | BatchTopK) -> TopK | BatchTopK:
    with torch.no_grad():
        module.b_enc_F.fill_(3.0)  # every pre-activation positive: "at most k" becomes "exactly k"
    return module


def _x(seed: int = 0, batch: int = B) -> torch.Tensor:
    return torch.randn(batch, D, generator=torch.Generator().manual_seed(seed)) / 4


def test_topk_keeps_exactly_k_largest_per_token() -> None:
    topk = _with_positive_bias(TopK(DictionaryConfig(d_in=D, width=M, architecture="topk", k=K)))
    out = topk(_x())
    active_BF = out.codes != 0
    assert (active_BF.sum(-1) == K).all()
    kth_largest_B1 = out.pre_activations.topk(K, dim=-1).values[:, -1:]
    assert (out.pre_activations[active_BF] > 0).all()
    assert torch.equal(active_BF, out.pre_activations >= kth_largest_B1)
    torch.testing.assert_close(out.codes[active_BF], out.pre_activations[active_BF])


def test_topk_never_passes_negative_values() -> None:
    topk = TopK(DictionaryConfig(d_in=D, width=M, architecture="topk", k=K))
    with torch.no_grad():
        topk.b_enc_F.fill_(-10.0)
    out = topk(_x())
    assert (out.codes == 0).all()
    assert topk.loss(_x()).sparsity.item() == 0.0


def test_batchtopk_training_keeps_k_times_batch_over_the_batch() -> None:
    module = _with_positive_bias(BatchTopK(DictionaryConfig(d_in=D, width=M, architecture="batchtopk", k=K)))
    module.train()
    out = module(_x())
    active_BF = out.codes != 0
    assert active_BF.sum().item() == K * B
    assert len(set(active_BF.sum(-1).tolist())) > 1  # per-token counts vary: a batch-level budget
    threshold = out.pre_activations[active_BF].min()
    assert torch.equal(active_BF, out.pre_activations >= threshold)
    assert module.inference_threshold.item() == pytest.approx(threshold.item())


def test_batchtopk_threshold_is_a_running_average_of_the_batch_minimum() -> None:
    config = DictionaryConfig(d_in=D, width=M, architecture="batchtopk", k=K, batchtopk_threshold_decay=0.9)
    module = _with_positive_bias(BatchTopK(config))
    assert not module.threshold_is_set
    first = module(_x(1)).codes
    second = module(_x(2)).codes
    min1, min2 = first[first > 0].min().item(), second[second > 0].min().item()
    assert min1 != pytest.approx(min2)
    assert module.inference_threshold.item() == pytest.approx(0.9 * min1 + 0.1 * min2, rel=1e-6)
    assert "inference_threshold" in module.state_dict()


def test_batchtopk_eval_uses_the_threshold_and_does_not_update_it() -> None:
    module = _with_positive_bias(BatchTopK(DictionaryConfig(d_in=D, width=M, architecture="batchtopk", k=K)))
    module.train()
    module(_x(1))
    module.eval()
    with torch.no_grad():
        module.inference_threshold.fill_(3.2)
    x_BD = _x(2)
    out = module(x_BD)
    expected = out.pre_activations * (out.pre_activations > 3.2)
    torch.testing.assert_close(out.codes, expected)
    assert (out.codes != 0).sum().item() != K * B
    torch.testing.assert_close(module(x_BD[:3]).codes, out.codes[:3])  # independent of the batch
    assert module.inference_threshold.item() == pytest.approx(3.2)


def test_batchtopk_eval_before_training_falls_back_to_batch_selection() -> None:
    module = _with_positive_bias(BatchTopK(DictionaryConfig(d_in=D, width=M, architecture="batchtopk", k=K)))
    module.eval()
    out = module(_x())
    assert (out.codes != 0).sum().item() == K * B
    assert not module.threshold_is_set


def test_relu_codes_and_decoder_weighted_l1_loss() -> None:
    config = DictionaryConfig(d_in=D, width=M, architecture="relu", l1_coefficient=0.2, lambda_warmup_steps=10)
    relu = ReLU(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        relu.W_dec_FD.mul_(torch.linspace(0.5, 2.0, M).unsqueeze(-1))
    x_BD = _x()
    out = relu.loss(x_BD, step=5)
    f_BF = out.output.codes
    torch.testing.assert_close(f_BF, torch.relu(out.output.pre_activations))
    expected = 0.1 * (f_BF * relu.W_dec_FD.norm(dim=-1)).sum(-1).mean()
    torch.testing.assert_close(out.sparsity, expected)
    assert out.sparsity_coefficient == pytest.approx(0.1)
    out.sparsity.backward()
    assert relu.W_enc_DF.grad is not None
    assert relu.W_enc_DF.grad.abs().sum() > 0
