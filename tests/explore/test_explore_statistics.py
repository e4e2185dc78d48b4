"""The streaming per-latent statistics against a brute-force computation over all codes at once."""

from __future__ import annotations

import math

import pytest
import torch

from saescope.explore.statistics import ExampleSettings, StatisticsAccumulator, power_of_two_ceiling

SETTINGS = ExampleSettings(top_k=4, intervals=8, samples_per_interval=2, histogram_bins=32, context_before=3,
                           context_after=2)  # fmt: skip
B, T, F = 3, 20, 40


def code_batches(n_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """Sparse non-negative codes whose scale grows batch by batch (so the grids double), BOS column zero."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n_batches):
        codes = torch.relu(torch.randn(B, T, F, generator=generator) * (1 + 2 * b) - 1.2)
        codes[:, 0] = 0  # BOS: never a firing, never an example
        codes[:, :, F - 1] = 0  # a dead latent
        batches.append(codes)
    return batches


def accumulate(batches: list[torch.Tensor], settings: ExampleSettings = SETTINGS, seed: int = 0):  # type: ignore[no-untyped-def]
    accumulator = StatisticsAccumulator(F, settings, device=torch.device("cpu"), seed=seed)
    for index, codes in enumerate(batches):
        accumulator.update(codes, first_window=index * B, n_tokens=B * (T - 1))
    return accumulator.result()


def test_counts_maxima_and_top_examples_equal_brute_force() -> None:
    batches = code_batches(5)
    stats = accumulate(batches)
    all_PF = torch.cat(batches).reshape(-1, F)  # row = window * T + position = the location
    assert stats.n_tokens == 5 * B * (T - 1)
    assert torch.equal(stats.count_F, (all_PF > 0).sum(0))
    assert torch.equal(stats.max_F, all_PF.max(0).values)
    torch.testing.assert_close(stats.sum_F, all_PF.double().sum(0))
    values_KF, rows_KF = all_PF.topk(SETTINGS.top_k, dim=0)
    assert torch.equal(stats.top_value_FK, values_KF.T)
    assert torch.equal(stats.top_location_FK[:-1], rows_KF.T[:-1])  # the dead latent has no examples
    assert (stats.top_location_FK[-1] == -1).all()
    assert (stats.top_location_FK[:-1] % T != 0).all()  # BOS never chosen


def test_example_contexts_are_the_codes_around_the_example_token() -> None:
    batches = code_batches(4)
    stats = accumulate(batches)
    all_PF = torch.cat(batches).reshape(-1, F)
    offsets = range(-SETTINGS.context_before, SETTINGS.context_after + 1)
    examples = [(f, k, stats.top_location_FK[f, k], stats.top_context_FKC[f, k]) for f in range(F) for k in range(4)]
    examples += [
        (f, n, stats.sample_location_FNM[f, n, m], stats.sample_context_FNMC[f, n, m])
        for f in range(F) for n in range(SETTINGS.intervals) for m in range(SETTINGS.samples_per_interval)
    ]  # fmt: skip
    checked = 0
    for f, _, location, context in examples:
        if location < 0:
            continue
        window, position = divmod(int(location), T)
        expected = [float(all_PF[window * T + position + o, f]) if 0 <= position + o < T else 0.0 for o in offsets]
        assert context.tolist() == expected
        checked += 1
    assert checked > F


def test_histogram_and_intervals_are_exact_and_every_sample_is_inside_its_interval() -> None:
    batches = code_batches(5)
    stats = accumulate(batches)
    all_PF = torch.cat(batches).reshape(-1, F)
    H, N, M = SETTINGS.histogram_bins, SETTINGS.intervals, SETTINGS.samples_per_interval
    for f in range(F - 1):
        scale = float(stats.scale_F[f])
        assert math.log2(scale).is_integer()
        assert scale / 2 < float(stats.max_F[f]) <= scale  # the smallest power of two covering the max
        values = all_PF[:, f][all_PF[:, f] > 0].double()
        histogram = torch.bincount(torch.floor(values * H / scale).long().clamp(max=H - 1), minlength=H)
        assert torch.equal(stats.histogram_FH[f], histogram)
        intervals = torch.floor(values * N / scale).long().clamp(max=N - 1)
        for k in range(N):
            in_interval = int((intervals == k).sum())
            locations = stats.sample_location_FNM[f, k]
            assert int((locations >= 0).sum()) == min(M, in_interval)
            for m in range(M):
                if locations[m] < 0:
                    continue
                value = float(stats.sample_value_FNM[f, k, m])
                assert value == float(all_PF[int(locations[m]), f])
                lo, hi = k * scale / N, (k + 1) * scale / N  # exact: powers of two
                assert lo <= value < hi or (k == N - 1 and value == hi)
    assert int(stats.scale_F[F - 1]) == 0
    assert stats.histogram_FH[F - 1].sum() == 0


def test_interval_samples_are_uniform_within_their_interval() -> None:
    """One latent fires 8 times in one interval, split over batches that double its grid: each firing is sampled
    with probability m / 8 (over many seeds)."""
    settings = ExampleSettings(top_k=1, intervals=2, samples_per_interval=2, histogram_bins=2, context_before=0,
                               context_after=0)  # fmt: skip
    hits = torch.zeros(32)
    trials = 600
    for seed in range(trials):
        accumulator = StatisticsAccumulator(1, settings, device=torch.device("cpu"), seed=seed)
        first = torch.zeros(1, 16, 1)
        first[0, :8, 0] = torch.tensor([0.30, 0.31, 0.32, 0.33, 0.20, 0.21, 0.22, 0.23])  # scale 0.5
        accumulator.update(first, first_window=0, n_tokens=16)
        second = torch.zeros(1, 16, 1)
        second[0, 8:, 0] = torch.tensor([0.60, 0.61, 0.62, 0.63, 0.90, 0.91, 0.92, 0.99])  # scale 1: bins merge
        accumulator.update(second, first_window=1, n_tokens=16)
        stats = accumulator.result()
        assert float(stats.scale_F[0]) == 1.0
        for location in stats.sample_location_FNM[0, 0].tolist():  # interval [0, 0.5): the first 8 firings
            hits[location] += 1
    frequencies = hits[:8] / trials
    assert hits[8:].sum() == 0
    assert torch.allclose(frequencies, torch.full((8,), 2 / 8), atol=0.06), frequencies


def test_power_of_two_ceiling() -> None:
    values = torch.tensor([0.3, 0.5, 1.0, 1.0001, 3.0, 1024.0, 1e-6])
    assert power_of_two_ceiling(values).tolist() == [0.5, 0.5, 1.0, 2.0, 4.0, 1024.0, 2.0**-19]


@pytest.mark.parametrize(
    ("field", "value"),
    [("intervals", 6), ("histogram_bins", 8), ("histogram_bins", 24), ("top_k", 0), ("context_before", -1)],
)
def test_settings_are_validated(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        ExampleSettings(**{"intervals": 16, "histogram_bins": 64, field: value})
