from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from synthetic import SITES, synthetic_stream
from torch import nn

from saescope.data.activations import (
    NormScaleEstimator,
    StreamedActivations,
    TokenActivations,
    heldout_token_budget,
    shuffled_batches,
    stream_token_activations,
    window_activations,
)
from saescope.data.prefetch import Prefetcher
from saescope.data.windows import WindowBatch, special_token_mask
from saescope.models.hooks import capture
from saescope.models.sites import Site, SiteKind, site_widths

SPECIAL = (0, 1, 2)  # pad, eos, bos in the tiny models' convention


def windows_with_specials() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (3, 10), generator=generator)
    ids[:, 0] = 2  # BOS
    ids[0, 4] = 1  # an EOS between documents
    ids[2, 7:] = 0  # padding at the end
    return ids


def test_special_positions_never_appear(tiny_gemma: nn.Module) -> None:
    ids = windows_with_specials()
    sites = [Site(0, SiteKind.RES), Site(1, SiteKind.ATT)]
    token_acts = window_activations(tiny_gemma, sites, WindowBatch.of_ids(ids), SPECIAL, first_window=7)
    keep = special_token_mask(ids, SPECIAL)
    assert token_acts.n_tokens == int(keep.sum()) == 30 - 3 - 1 - 3
    assert not torch.isin(token_acts.token_ids_N, torch.tensor(SPECIAL)).any()
    assert 0 not in token_acts.positions_N.tolist()
    assert set(token_acts.windows_N.tolist()) == {7, 8, 9}
    full = capture(tiny_gemma, sites, ids)
    for site in sites:
        torch.testing.assert_close(token_acts.acts[site], full[site][keep], rtol=0, atol=0)


def test_norm_scale_matches_the_analytic_value() -> None:
    # Rows of norm 3 and 4 in equal numbers: E‖x‖² = (9 + 16) / 2, so C = sqrt(12.5).
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(1000, 16, generator=generator), dim=-1)
    norms = torch.tensor([3.0, 4.0]).repeat(500).unsqueeze(1)
    estimator = NormScaleEstimator([SITES[0]])
    for chunk in (directions * norms).split(128):
        estimator.update({SITES[0]: chunk})
    assert estimator.n_tokens == 1000
    assert estimator.scales()[SITES[0]] == pytest.approx(math.sqrt(12.5), rel=1e-6)


def test_shuffled_batches_emit_every_token_once_and_mix_windows() -> None:
    chunks = (chunk.acts for chunk in synthetic_stream(n_windows=40))  # 200 tokens
    batches = list(shuffled_batches(chunks, 16, buffer_tokens=64, generator=torch.Generator().manual_seed(0)))
    ids = torch.cat([b[SITES[0]][:, 0] for b in batches]).long()
    assert sorted(ids.tolist()) == list(range(200))
    assert all(b[SITES[0]].dtype == torch.float32 for b in batches)
    first_windows = {int(i) // 5 for i in batches[0][SITES[0]][:, 0]}
    assert len(first_windows) > 3  # tokens of one batch come from many windows


def test_shuffled_batches_release_each_sites_parts_before_concatenating_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shuffle buffer's peak: while one site is concatenated, the other sites' old parts are already freed
    (holding every site's parts and the merged buffer at once doubled the stream's memory)."""
    site_a, site_b = SITES[0], SITES[1]  # widths 4 and 3 here, so that a concatenation tells which site it is
    parts_of_a: list[weakref.ref[torch.Tensor]] = []

    def chunks() -> Iterator[dict[Site, torch.Tensor]]:
        for index in range(6):
            part = torch.full((10, 4), float(index))
            parts_of_a.append(weakref.ref(part))
            yield {site_a: part, site_b: torch.full((10, 3), float(index))}

    alive_when_b_merged: list[int] = []
    original_cat = torch.cat

    def watching_cat(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...], *args: Any, **kwargs: Any) -> torch.Tensor:
        if tensors[0].shape[-1] == 3:  # site b's parts; the newest chunk is still held by the generators
            alive_when_b_merged.append(sum(ref() is not None for ref in parts_of_a[:-1]))
        return original_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", watching_cat)
    stream = shuffled_batches(chunks(), 10, buffer_tokens=40, generator=torch.Generator().manual_seed(0))
    assert len(list(stream)) == 6
    assert alive_when_b_merged
    assert alive_when_b_merged == [0] * len(alive_when_b_merged)


def test_prefetch_propagates_errors_and_stops_early() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("producer broke")

    with pytest.raises(RuntimeError, match="producer broke"), Prefetcher(failing()) as items:
        list(items)
    produced: list[int] = []

    def endless() -> Iterator[int]:
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    with Prefetcher(endless(), depth=2) as items:
        for item in items:
            if item == 3:
                break
    assert len(produced) <= 3 + 1 + 2 + 1  # bounded look-ahead
    assert not any(t.name == "saescope-prefetch" and t.is_alive() for t in threading.enumerate())


def test_streamed_source_gives_trainer_batches(tiny_gemma: nn.Module) -> None:
    sites = [Site(0, SiteKind.RES), Site(2, SiteKind.MLP)]
    ids = windows_with_specials()

    def window_batches(epoch: int) -> list[WindowBatch]:
        return [WindowBatch.of_ids(ids[:2]), WindowBatch.of_ids(ids[2:])]

    source = StreamedActivations(
        tiny_gemma, sites, site_widths(tiny_gemma, sites), window_batches, SPECIAL, norm_tokens=10, buffer_tokens=8
    )
    batches = list(source.batches(4, seed=1))
    assert sum(b[sites[0]].shape[0] for b in batches) == 23
    assert batches[0][sites[1]].shape == (4, 32)
    # norm_tokens=10 is reached after the first forward batch (2 windows, 15 kept tokens).
    first = next(stream_token_activations(tiny_gemma, sites, [WindowBatch.of_ids(ids[:2])], SPECIAL))
    expected = first.acts[sites[0]]
    assert source.norm_scales[sites[0]] == pytest.approx(expected.norm(dim=-1).square().mean().sqrt().item(), rel=1e-5)


def chunk_of(n_tokens: int) -> TokenActivations:
    ids = torch.arange(n_tokens)
    return TokenActivations({}, ids, ids, torch.zeros_like(ids), 1)


def test_the_token_budget_takes_whole_chunks_then_the_rest_and_stops() -> None:
    chunks = iter([chunk_of(5), chunk_of(5), chunk_of(5), chunk_of(5)])
    taken = [take for _, take in heldout_token_budget(chunks, 12, desc="test", progress=False)]
    assert taken == [5, 5, 2]
    assert next(chunks).n_tokens == 5  # the fourth chunk is never drawn
    assert [take for _, take in heldout_token_budget([chunk_of(3)], 12, desc="test", progress=False)] == [3]
    with pytest.raises(ValueError, match="held-out split produced no tokens"):
        list(heldout_token_budget([], 12, desc="test", progress=False))
