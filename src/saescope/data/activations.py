"""The activation stream: token windows -> one model forward -> every site's activations at once.

Positions holding special tokens (BOS, EOS, padding, ...) are dropped here, once, so nothing
downstream trains or evaluates on them (method §2.3, §6.4). The dataset-wide normalisation scale C of
each site, with E‖x/C‖² = 1 (method §2.2), is estimated from the same stream.

Both activation sources the trainer can read -- this live stream and the on-disk cache
(`saescope.data.cache`) -- implement `ActivationSource`: shuffled float32 batches of token
activations for every site, plus the sites' widths and normalisation scales.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from saescope.data.prefetch import Prefetcher
from saescope.data.windows import WindowBatch
from saescope.models.hooks import capture
from saescope.models.sites import Site

#: A batch of training data: site -> (B, d_site) float32 activations of the same B tokens.
SiteBatch = dict[Site, torch.Tensor]


class ActivationSource(Protocol):
    """What a trainer reads: shuffled float32 batches for every site, with widths and scales."""

    @property
    def sites(self) -> list[Site]: ...

    @property
    def widths(self) -> dict[Site, int]: ...

    @property
    def norm_scales(self) -> dict[Site, float]: ...

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, skip_batches: int = 0) -> Iterator[SiteBatch]:
        """Batches of one epoch in a seeded order; `skip_batches` resumes mid-epoch at the same place."""
        ...


def heldout_token_budget(
    stream: Iterable[TokenActivations], tokens: int, *, desc: str, progress: bool
) -> Iterator[tuple[TokenActivations, int]]:
    """Each chunk of a held-out ``stream`` with how many of its first tokens to use, until ``tokens`` in all, with a
    progress bar (``desc``); ValueError when the stream gives no token at all."""
    seen = 0
    with tqdm(total=tokens, unit="tok", unit_scale=True, disable=not progress, desc=desc) as bar:
        for token_acts in stream:
            take = min(token_acts.n_tokens, tokens - seen)
            yield token_acts, take
            seen += take
            bar.update(take)
            if seen >= tokens:
                break
    if seen == 0:
        raise ValueError("the held-out split produced no tokens; use a larger corpus or a larger heldout_fraction")


class TokenStreamer(Protocol):
    """How a live source runs the model on batches of windows: `stream_token_activations`, or the same stream with
    the forwards split over torchrun ranks (`saescope.train.distributed.rank_split_forwards`)."""

    def __call__(
        self,
        model: nn.Module,
        sites: Sequence[Site],
        window_batches: Iterable[WindowBatch],
        special_ids: Collection[int],
        *,
        prefetch_depth: int = 2,
    ) -> Iterator[TokenActivations]: ...


class KnownSites:
    """The sites a source holds and their widths, fixed when it opens: the part of `ActivationSource` that the
    live stream and the on-disk cache share. Subclasses set ``_sites`` and ``_widths``."""

    _sites: list[Site]
    _widths: dict[Site, int]

    @property
    def sites(self) -> list[Site]:
        return list(self._sites)

    @property
    def widths(self) -> dict[Site, int]:
        return dict(self._widths)


@dataclass(frozen=True)
class TokenActivations:
    """Activations of every site at the kept (non-special) positions of one batch of windows."""

    acts: dict[Site, torch.Tensor]  # site -> (N, d_site), the model's dtype
    token_ids_N: torch.Tensor  # (N,) int64, the token at each kept position
    positions_N: torch.Tensor  # (N,) int64, the position inside its window
    windows_N: torch.Tensor  # (N,) int64, the window's index in the stream
    n_windows: int

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids_N.shape[0])


def window_activations(
    model: nn.Module,
    sites: Sequence[Site],
    windows: WindowBatch,
    special_ids: Collection[int],
    first_window: int = 0,
) -> TokenActivations:
    """One forward over a batch of full-length windows; returns every site at the kept positions (no special
    token, kept by the chat mask policy)."""
    device = next(model.parameters()).device
    ids_BT = windows.ids_BT
    keep_BT = windows.kept_positions(special_ids)
    captured = capture(model, sites, ids_BT.to(device))
    keep_on_device = keep_BT.to(device)
    acts = {site: captured[site][keep_on_device] for site in sites}
    batch, length = ids_BT.shape
    positions_BT = torch.arange(length).expand(batch, length)
    windows_BT = (torch.arange(batch) + first_window).unsqueeze(1).expand(batch, length)
    return TokenActivations(
        acts=acts,
        token_ids_N=ids_BT[keep_BT],
        positions_N=positions_BT[keep_BT],
        windows_N=windows_BT[keep_BT],
        n_windows=batch,
    )


def stream_token_activations(
    model: nn.Module,
    sites: Sequence[Site],
    window_batches: Iterable[WindowBatch],
    special_ids: Collection[int],
    *,
    prefetch_depth: int = 2,
    first_window: int = 0,
) -> Iterator[TokenActivations]:
    """Activations for each batch of windows, computed one batch ahead in a background thread."""

    def produce() -> Iterator[TokenActivations]:
        window = first_window
        for windows in window_batches:
            yield window_activations(model, sites, windows, special_ids, first_window=window)
            window += windows.n_windows

    with Prefetcher(produce(), depth=prefetch_depth) as prefetched:
        yield from prefetched


#: A row whose norm is more than this many times the median row norm is no token activation of a healthy model
#: (a corrupt row, a sum over tokens, an overflow): the normalisation scale leaves such rows out, and a user's
#: activation file holding one is refused (`saescope.data.arrays`).
OUTLIER_NORM_RATIO = 1e4


def outlier_free_rows(sq_norms_N: torch.Tensor) -> torch.Tensor | None:
    """The rows (a bool mask) whose squared norm is at most `OUTLIER_NORM_RATIO`² times the median squared norm,
    or None when every row is (or there is no positive median to compare with)."""
    if sq_norms_N.numel() == 0:
        return None
    median = float(sq_norms_N.median())
    if not median > 0:
        return None
    keep_N = sq_norms_N <= OUTLIER_NORM_RATIO**2 * median
    return None if bool(keep_N.all()) else keep_N


def robust_mean_square(sq_norms_N: torch.Tensor) -> torch.Tensor:
    """E‖x‖² over the rows, leaving out rows far above the median norm (`outlier_free_rows`).

    Ten rows of norm 1e30 among 200,000 would otherwise set the scale C near 1e28 and divide every real token
    to nothing. On rows without such outliers this is exactly ``sq_norms_N.mean()``, bit for bit.
    """
    keep_N = outlier_free_rows(sq_norms_N)
    return sq_norms_N.mean() if keep_N is None else sq_norms_N[keep_N].mean()


class NormScaleEstimator:
    """Accumulates E‖x‖² per site in float64; `scales()` gives C = sqrt(E‖x‖²) (method §2.2), leaving out rows far
    above the median norm (`outlier_free_rows`; on data without them, the plain mean, bit for bit)."""

    def __init__(self, sites: Sequence[Site]) -> None:
        self.sum_sq: dict[Site, float] = {site: 0.0 for site in sites}
        self.n_tokens = 0
        #: Each update's per-row squared norms (float32, on the CPU), to find outlier rows at the end.
        self._sq_norms: dict[Site, list[torch.Tensor]] = {site: [] for site in sites}

    def update(self, acts: Mapping[Site, torch.Tensor]) -> None:
        counts = {int(x.shape[0]) for x in acts.values()}
        if len(counts) != 1:
            raise ValueError(f"all sites must hold the same tokens, got row counts {sorted(counts)}")
        for site, x_ND in acts.items():
            # Per-row squared norms in float32 (exact enough for d of a few thousand); the sum in float64.
            sq_N = torch.linalg.vector_norm(x_ND, dim=-1, dtype=torch.float32).square()
            self.sum_sq[site] += float(sq_N.double().sum())
            self._sq_norms.setdefault(site, []).append(sq_N.cpu())
        self.n_tokens += counts.pop()

    def scales(self) -> dict[Site, float]:
        if self.n_tokens == 0:
            raise ValueError("cannot estimate normalisation scales from zero tokens")
        return {site: self._scale(site, total) for site, total in self.sum_sq.items()}

    def _scale(self, site: Site, total: float) -> float:
        chunks = self._sq_norms.get(site, [])
        keep_N = outlier_free_rows(torch.cat(chunks)) if chunks else None
        if keep_N is None:
            return math.sqrt(total / self.n_tokens)
        kept = torch.cat(chunks)[keep_N]
        return math.sqrt(float(kept.double().sum()) / kept.numel())


def shuffled_batches(
    chunks: Iterable[Mapping[Site, torch.Tensor]],
    batch_size: int,
    *,
    buffer_tokens: int,
    generator: torch.Generator,
) -> Iterator[SiteBatch]:
    """Mix tokens from many windows through a bounded buffer and cut float32 batches of `batch_size`.

    Consecutive tokens of one window are strongly correlated; the buffer holds `buffer_tokens` rows,
    is permuted, and half of it is emitted before refilling. Every input token is emitted exactly once
    (the last batch may be smaller).
    """
    if batch_size < 1 or buffer_tokens < batch_size:
        raise ValueError(f"need 1 <= batch_size <= buffer_tokens, got {batch_size} and {buffer_tokens}")
    pending: list[Mapping[Site, torch.Tensor]] = []
    buffer: SiteBatch = {}

    def rows(part: Mapping[Site, torch.Tensor]) -> int:
        return int(next(iter(part.values())).shape[0]) if part else 0

    def merge() -> SiteBatch:
        # Site by site, each site's parts released once concatenated: the old parts and the merged buffer are
        # never all held at once (all at once, they were about twice the buffer).
        parts = [dict(part) for part in ([buffer] if buffer else []) + pending]
        buffer.clear()
        pending.clear()
        merged: SiteBatch = {}
        for site in list(parts[0]):
            merged[site] = torch.cat([part.pop(site) for part in parts])
        return merged

    def emit(merged: SiteBatch, n_out: int) -> Iterator[SiteBatch]:
        order = torch.randperm(rows(merged), generator=generator)
        out, keep = order[:n_out], order[n_out:]
        for start in range(0, n_out, batch_size):
            index = out[start : start + batch_size]
            yield {site: x[index].float() for site, x in merged.items()}
        buffer.clear()
        for site in list(merged):  # each site's rows kept, then its merged rows released
            buffer[site] = merged.pop(site)[keep]

    for chunk in chunks:
        pending.append(chunk)
        if rows(buffer) + sum(rows(part) for part in pending) >= buffer_tokens:
            merged = merge()
            total = rows(merged)
            # Emit whole batches and keep about half a buffer behind to mix with the next windows.
            n_out = max((total - buffer_tokens // 2) // batch_size, 1) * batch_size
            yield from emit(merged, min(n_out, total))
    if buffer or pending:
        merged = merge()
        yield from emit(merged, rows(merged))


class StreamedActivations(KnownSites):
    """An `ActivationSource` that runs the model live: no disk, one forward per batch of windows.

    `window_batches(epoch)` returns the batches of token windows for one pass over the corpus, and `forwards` runs
    the model on them (in this process, or split over torchrun ranks). The scales
    are estimated by an extra forward over the first `norm_tokens` tokens of epoch 0 (holding their
    activations for every site instead would cost far more memory than recomputing them).
    """

    def __init__(
        self,
        model: nn.Module,
        sites: Sequence[Site],
        widths: Mapping[Site, int],
        window_batches: Callable[[int], Iterable[WindowBatch]],
        special_ids: Collection[int],
        *,
        norm_tokens: int = 20_000,
        buffer_tokens: int = 65_536,
        prefetch_depth: int = 2,
        forwards: TokenStreamer = stream_token_activations,
    ) -> None:
        self._model = model
        self._sites = list(sites)
        self._widths = dict(widths)
        self._window_batches = window_batches
        self._special_ids = special_ids
        self._norm_tokens = norm_tokens
        self._buffer_tokens = buffer_tokens
        self._prefetch_depth = prefetch_depth
        self._forwards = forwards
        self._scales: dict[Site, float] | None = None

    @property
    def buffer_tokens(self) -> int:
        """Rows of the shuffle buffer that training batches are drawn from (memory planning reads it)."""
        return self._buffer_tokens

    @property
    def norm_scales(self) -> dict[Site, float]:
        if self._scales is None:
            estimator = NormScaleEstimator(self._sites)
            for token_acts in self.token_stream(epoch=0):
                estimator.update(token_acts.acts)
                if estimator.n_tokens >= self._norm_tokens:
                    break
            self._scales = estimator.scales()
        return dict(self._scales)

    def token_stream(self, epoch: int) -> Iterator[TokenActivations]:
        """The activations of one pass over the corpus, in window order."""
        return self._forwards(
            self._model,
            self._sites,
            self._window_batches(epoch),
            self._special_ids,
            prefetch_depth=self._prefetch_depth,
        )

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        skip_batches: int = 0,
        sites: Sequence[Site] | None = None,
    ) -> Iterator[SiteBatch]:
        """Live batches; skipping recomputes the skipped forwards (the stream has no random access).

        The permutation depends only on row counts, so keeping fewer `sites` leaves the token order alone.
        """
        keep = list(sites) if sites is not None else self._sites
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        chunks = ({site: token_acts.acts[site] for site in keep} for token_acts in self.token_stream(epoch))
        stream = shuffled_batches(chunks, batch_size, buffer_tokens=self._buffer_tokens, generator=generator)
        for index, batch in enumerate(stream):
            if index >= skip_batches:
                yield batch
