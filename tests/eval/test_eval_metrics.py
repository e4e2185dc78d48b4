from __future__ import annotations

import numpy as np
import pytest
import torch

from saescope.eval.metrics import LossAccumulator, ReconstructionAccumulator, mean_and_stderr, paired_difference


def accumulate(x_ND: torch.Tensor, x_hat_ND: torch.Tensor, f_NF: torch.Tensor) -> dict[str, object]:
    accumulator = ReconstructionAccumulator(x_ND.shape[1], f_NF.shape[1], max_position=8)
    positions_N = torch.arange(x_ND.shape[0]) % 8
    for part in range(0, x_ND.shape[0], 7):  # several updates, as in a stream
        s = slice(part, part + 7)
        accumulator.update(x_ND[s], x_hat_ND[s], f_NF[s], positions_N[s])
    return accumulator.result()


def random_data(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(100, 6, generator=generator) * 2.0 + torch.tensor([5.0, -3.0, 0.0, 1.0, 8.0, 0.5])


def test_fvu_matches_numpy_with_a_non_zero_mean() -> None:
    x = random_data()
    x_hat = x + 0.3 * random_data(seed=1)
    result = accumulate(x, x_hat, torch.ones(100, 3))
    x_np, x_hat_np = x.double().numpy(), x_hat.double().numpy()
    expected = ((x_np - x_hat_np) ** 2).sum() / ((x_np - x_np.mean(0)) ** 2).sum()
    assert result["fvu"] == pytest.approx(expected, rel=1e-12)
    assert result["explained_variance"] == pytest.approx(1 - expected, rel=1e-12)
    # The wrong formula (variance about zero) would give a very different, flattering number here.
    assert abs(result["fvu"] - ((x_np - x_hat_np) ** 2).sum() / (x_np**2).sum()) > 0.1


def test_identity_gives_fvu_0_and_the_mean_gives_fvu_1() -> None:
    x = random_data()
    assert accumulate(x, x.clone(), torch.ones(100, 2))["fvu"] == 0.0
    mean_result = accumulate(x, x.double().mean(0).float().expand_as(x), torch.zeros(100, 2))
    assert mean_result["fvu"] == pytest.approx(1.0, rel=1e-6)
    assert mean_result["dead_fraction"] == 1.0


def test_l0_density_and_dense_fractions_of_a_hand_built_code_matrix() -> None:
    f = torch.zeros(100, 4)
    f[:, 0] = 1.0  # fires on every token: dense
    f[:5, 1] = 2.0  # 5%: dense above 1%, not above 10%
    f[0, 2] = 0.5  # 1%: not dense
    result = accumulate(torch.randn(100, 3), torch.randn(100, 3), f)
    assert result["l0"] == pytest.approx((100 + 5 + 1) / 100)
    assert result["dead_fraction"] == 0.25
    assert result["dense_fraction_above_0.01"] == 0.5
    assert result["dense_fraction_above_0.1"] == 0.25
    histogram = result["log10_density_histogram"]
    assert sum(histogram["counts"]) == 3
    assert histogram["dead"] == 1


def test_cosine_and_l2_ratio() -> None:
    x = random_data()
    result = accumulate(x, 0.5 * x, torch.ones(100, 1))
    assert result["cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert result["l2_ratio"] == pytest.approx(0.5, rel=1e-6)


def test_mean_and_stderr() -> None:
    values = np.array([1.0, 2.0, 4.0, 7.0])
    mean, stderr = mean_and_stderr(values.sum(), (values**2).sum(), 4)
    assert mean == pytest.approx(values.mean())
    assert stderr == pytest.approx(values.std(ddof=1) / 2)


def test_loss_recovered_and_delta() -> None:
    accumulator = LossAccumulator(max_position=4)
    clean, zero = torch.tensor([2.0, 2.0]), torch.tensor([6.0, 6.0])
    accumulator.update(clean, torch.tensor([3.0, 3.0]), zero, torch.tensor([0.1, 0.3]), torch.tensor([1, 2]))
    result = accumulator.result()
    assert result["delta_lm_loss"] == pytest.approx(1.0)
    assert result["loss_recovered"] == pytest.approx(0.75)
    assert result["kl_clean_to_spliced"] == pytest.approx(0.2)
    assert result["delta_lm_loss_by_position"] == [None, 1.0, 1.0, None]


def test_paired_difference_cancels_what_two_dictionaries_share() -> None:
    shared = torch.linspace(0.0, 4.0, 200)  # hard tokens are hard for both
    accumulators = [LossAccumulator(max_position=4, keep_deltas=True) for _ in range(2)]
    for accumulator, offset in zip(accumulators, (0.0, 0.1), strict=True):
        spliced = shared + offset + 0.01 * torch.arange(200).remainder(3)
        kl = shared / 10 + offset / 2
        accumulator.update(torch.zeros(200), spliced, torch.full((200,), 9.0), kl, torch.ones(200).long())
    first, second = (accumulator.result() for accumulator in accumulators)
    per_prediction = "delta_lm_loss_per_prediction"
    difference, stderr = paired_difference(second[per_prediction], first[per_prediction])
    assert difference == pytest.approx(0.1, abs=1e-6)
    assert stderr < first["delta_lm_loss_stderr"] / 10
    assert first["kl_per_prediction"] == pytest.approx((shared / 10).tolist())  # in evaluation order
    kl_difference, kl_stderr = paired_difference(second["kl_per_prediction"], first["kl_per_prediction"])
    assert kl_difference == pytest.approx(0.05, abs=1e-6)
    assert kl_stderr < first["kl_clean_to_spliced_stderr"] / 10
    plain = LossAccumulator(max_position=4)
    plain.update(torch.zeros(2), torch.ones(2), torch.ones(2), torch.zeros(2), torch.ones(2).long())
    assert not {"delta_lm_loss_per_prediction", "kl_per_prediction"} & set(plain.result())  # only when asked for
    with pytest.raises(ValueError, match="same predictions"):
        paired_difference([0.1, 0.2], [0.1])


def test_fvu_mean_over_dimensions_counts_every_dimension_alike() -> None:
    x = random_data()
    x[:, 0] *= 100.0  # one massive dimension, reconstructed perfectly; the others not at all
    x_hat = x.double().mean(0).float().expand_as(x).clone()
    x_hat[:, 0] = x[:, 0]
    result = accumulate(x, x_hat, torch.ones(100, 2))
    assert result["fvu"] < 0.01  # the plain FVU sees the massive dimension only
    assert result["fvu_mean_over_dimensions"] == pytest.approx(5 / 6, rel=1e-6)
