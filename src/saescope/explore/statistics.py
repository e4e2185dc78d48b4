"""Per-latent statistics of one dictionary, accumulated over a stream of token windows in bounded memory.

For every latent, vectorised over all latents (no Python loop per latent):

* firing count, activation sum and maximum;
* the **top-k examples**: the k largest activations with their location and the latent's activations on
  the tokens around them (merged batch by batch with ``torch.topk``);
* an **activation histogram** and **interval samples**, both on a grid that is exact without knowing the
  maximum in advance. The grid of a latent is ``[0, S)`` with ``S`` a power of two that is at least its
  running maximum (the last bin is closed at ``S``): histogram bin ``j`` is ``[j·S/H, (j+1)·S/H)`` and
  interval ``k`` is ``[k·S/N, (k+1)·S/N)``, with ``H`` and ``N`` powers of two. When a larger activation
  arrives, ``S`` doubles and adjacent bins merge pairwise, which is exact for counts and for the samples
  below. Because ``v·N/S`` is exact in float64 for a float32 ``v`` and powers of two, the bin of every
  value is decided exactly (``floor(v·N/S)``), so each sample provably lies in its interval.
* **interval samples** are uniform without replacement: every firing gets an independent random key, and
  an interval keeps the ``m`` firings with the smallest keys (a bottom-m sketch). The bottom-m of a union is
  the bottom-m of the members' bottom-m, which is what makes batch merges and bin doublings exact.

Examples carry the latent's activations on ``context_before`` tokens before and ``context_after`` tokens after
the example token (zero outside the window and at special tokens, whose codes the caller leaves at zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saescope.checks import check_at_least

_EMPTY_KEY = float("inf")


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


@dataclass(frozen=True)
class ExampleSettings:
    """How many examples and how much context to keep per latent."""

    top_k: int = 16
    intervals: int = 16
    samples_per_interval: int = 3
    histogram_bins: int = 64
    context_before: int = 20
    context_after: int = 8

    def __post_init__(self) -> None:
        check_at_least(self, ("top_k", "samples_per_interval"), 1, owner="")
        check_at_least(self, ("context_before", "context_after"), 0, owner="")
        if not _is_power_of_two(self.intervals) or self.intervals < 2:
            raise ValueError(f"intervals must be a power of two >= 2 (bins merge pairwise); got {self.intervals!r}")
        if not _is_power_of_two(self.histogram_bins) or self.histogram_bins < self.intervals:
            raise ValueError(
                f"histogram_bins must be a power of two >= intervals ({self.intervals}); got {self.histogram_bins!r}"
            )

    @property
    def context(self) -> int:
        return self.context_before + 1 + self.context_after


@dataclass(frozen=True)
class LatentStatistics:
    """The finished statistics of one dictionary's F latents (CPU tensors).

    Locations are ``window * T + position`` in the stream of indexed windows (T tokens each). Empty top-k
    slots have value 0 and location -1; empty interval slots have location -1.
    """

    n_tokens: int
    window_length: int
    count_F: torch.Tensor  # int64 firings
    sum_F: torch.Tensor  # float64 sum of activations
    max_F: torch.Tensor  # float32
    scale_F: torch.Tensor  # float64 S (0 for a latent that never fired)
    histogram_FH: torch.Tensor  # int64 counts on [j·S/H, (j+1)·S/H)
    top_value_FK: torch.Tensor  # float32, descending
    top_location_FK: torch.Tensor  # int64
    top_context_FKC: torch.Tensor  # float32
    sample_value_FNM: torch.Tensor  # float32
    sample_location_FNM: torch.Tensor  # int64
    sample_context_FNMC: torch.Tensor  # float32

    @property
    def intervals(self) -> int:
        return int(self.sample_value_FNM.shape[1])

    @property
    def histogram_bins(self) -> int:
        return int(self.histogram_FH.shape[1])


def power_of_two_ceiling(values: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= each (positive) value, float64."""
    mantissa, exponent = torch.frexp(values.double())  # value = mantissa * 2**exponent, mantissa in [0.5, 1)
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)
    return torch.ldexp(torch.ones_like(mantissa), exponent)


class StatisticsAccumulator:
    """Streaming statistics of one dictionary's latents; feed it the codes of each batch of windows."""

    def __init__(self, width: int, settings: ExampleSettings, *, device: torch.device, seed: int = 0) -> None:
        s = settings
        F, K, N, M, C, H = width, s.top_k, s.intervals, s.samples_per_interval, s.context, s.histogram_bins
        self.settings = settings
        self.width = width
        self.n_tokens = 0
        self.window_length = 0
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self._offsets_C = torch.arange(-s.context_before, s.context_after + 1, device=device)
        self.count_F = torch.zeros(F, dtype=torch.int64, device=device)
        self.sum_F = torch.zeros(F, dtype=torch.float64, device=device)
        self.scale_F = torch.zeros(F, dtype=torch.float64, device=device)
        self.histogram_FH = torch.zeros(F, H, dtype=torch.int64, device=device)
        self.top_value_FK = torch.zeros(F, K, dtype=torch.float32, device=device)
        self.top_location_FK = torch.full((F, K), -1, dtype=torch.int64, device=device)
        self.top_context_FKC = torch.zeros(F, K, C, dtype=torch.float32, device=device)
        # Interval samples, one row per (latent, interval): G = F * N groups of M slots.
        self.sample_key_GM = torch.full((F * N, M), _EMPTY_KEY, dtype=torch.float32, device=device)
        self.sample_value_GM = torch.zeros(F * N, M, dtype=torch.float32, device=device)
        self.sample_location_GM = torch.full((F * N, M), -1, dtype=torch.int64, device=device)
        self.sample_context_GMC = torch.zeros(F * N, M, C, dtype=torch.float32, device=device)

    # --- one batch ----------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, codes_BTF: torch.Tensor, first_window: int, n_tokens: int) -> None:
        """Add one batch: ``codes_BTF`` are the codes of B whole windows of T tokens (zero at positions that
        must never be chosen: special tokens, tokens past the index's budget); ``first_window`` is the index of
        the first window in the stream; ``n_tokens`` counts the batch's indexed tokens (the density's
        denominator)."""
        B, T, F = codes_BTF.shape
        if self.width != F:
            raise ValueError(f"codes have {F} latents; this accumulator has {self.width}")
        if self.window_length not in (0, T):
            raise ValueError(f"every window must have the same length; got {T} after {self.window_length}")
        self.window_length = T
        self.n_tokens += n_tokens
        flat_PF = codes_BTF.reshape(B * T, F).float()
        offset = first_window * T  # location of the batch's first grid position in the whole stream
        self._update_top(flat_PF, T, offset)
        self._grow_scales(self.top_value_FK[:, 0])  # the running maximum
        rows_N, latents_N = flat_PF.nonzero(as_tuple=True)
        values_N = flat_PF[rows_N, latents_N]
        self.count_F += torch.bincount(latents_N, minlength=F)
        self.sum_F.index_add_(0, latents_N, values_N.double())
        H, N = self.settings.histogram_bins, self.settings.intervals
        bin_N = torch.floor(values_N.double() * H / self.scale_F[latents_N]).long().clamp_(max=H - 1)
        self.histogram_FH.view(-1).index_add_(0, latents_N * H + bin_N, torch.ones_like(bin_N))
        interval_N = bin_N // (H // N)  # == floor(v·N/S): the histogram grid refines the interval grid
        self._update_samples(flat_PF, T, offset, rows_N, latents_N, values_N, latents_N * N + interval_N)

    def _contexts(self, flat_PF: torch.Tensor, rows: torch.Tensor, latents: torch.Tensor, T: int) -> torch.Tensor:
        """The latent's activations on the tokens around each (row, latent): shape rows.shape + (C,)."""
        positions = (rows % T).unsqueeze(-1) + self._offsets_C
        valid = (positions >= 0) & (positions < T)
        grid_rows = (rows - rows % T).unsqueeze(-1) + positions.clamp(0, T - 1)
        return flat_PF[grid_rows, latents.unsqueeze(-1).expand_as(grid_rows)] * valid

    def _update_top(self, flat_PF: torch.Tensor, T: int, offset: int) -> None:
        K = self.settings.top_k
        k = min(K, flat_PF.shape[0])
        values_kF, rows_kF = flat_PF.topk(k, dim=0)
        values_Fk, rows_Fk = values_kF.T, rows_kF.T
        latents_Fk = torch.arange(self.width, device=flat_PF.device).unsqueeze(1).expand_as(rows_Fk)
        contexts_FkC = self._contexts(flat_PF, rows_Fk, latents_Fk, T)
        locations_Fk = torch.where(values_Fk > 0, rows_Fk + offset, -1)
        values = torch.cat([self.top_value_FK, values_Fk], dim=1)
        keep_FK = values.topk(K, dim=1).indices
        self.top_value_FK = values.gather(1, keep_FK)
        self.top_location_FK = torch.cat([self.top_location_FK, locations_Fk], dim=1).gather(1, keep_FK)
        contexts = torch.cat([self.top_context_FKC, contexts_FkC], dim=1)
        self.top_context_FKC = contexts.gather(1, keep_FK.unsqueeze(-1).expand(-1, -1, contexts.shape[-1]))

    def _grow_scales(self, max_F: torch.Tensor) -> None:
        """Set S for latents that fired for the first time; double S (merging bins) where the max outgrew it."""
        first = (self.scale_F == 0) & (max_F > 0)
        self.scale_F[first] = power_of_two_ceiling(max_F[first])
        while True:
            grow = (self.scale_F > 0) & (max_F.double() > self.scale_F)
            if not bool(grow.any()):
                return
            self._double(grow.nonzero().squeeze(1))

    def _double(self, latents: torch.Tensor) -> None:
        """Double S of ``latents``: bins 2j and 2j+1 become bin j; the upper half of the grid starts empty."""
        s = self.settings
        n, H, N, M = len(latents), s.histogram_bins, s.intervals, s.samples_per_interval
        histogram = self.histogram_FH[latents].view(n, H // 2, 2).sum(-1)
        self.histogram_FH[latents] = torch.cat([histogram, torch.zeros_like(histogram)], dim=1)
        rows_G = (latents.unsqueeze(1) * N + torch.arange(N, device=latents.device)).reshape(-1)
        keys = self.sample_key_GM[rows_G].view(n * N // 2, 2 * M)
        keep = keys.topk(M, dim=1, largest=False).indices
        merged_key = keys.gather(1, keep)
        merged_value = self.sample_value_GM[rows_G].view(n * N // 2, 2 * M).gather(1, keep)
        merged_location = self.sample_location_GM[rows_G].view(n * N // 2, 2 * M).gather(1, keep)
        C = s.context
        contexts = self.sample_context_GMC[rows_G].view(n * N // 2, 2 * M, C)
        merged_context = contexts.gather(1, keep.unsqueeze(-1).expand(-1, -1, C))

        def upper_half_empty(merged: torch.Tensor, empty: float) -> torch.Tensor:
            merged = merged.view(n, N // 2, *merged.shape[1:])
            return torch.cat([merged, torch.full_like(merged, empty)], dim=1).view(n * N, *merged.shape[2:])

        self.sample_key_GM[rows_G] = upper_half_empty(merged_key, _EMPTY_KEY)
        self.sample_value_GM[rows_G] = upper_half_empty(merged_value, 0.0)
        self.sample_location_GM[rows_G] = upper_half_empty(merged_location, -1)
        self.sample_context_GMC[rows_G] = upper_half_empty(merged_context, 0.0)
        self.scale_F[latents] *= 2

    def _update_samples(
        self,
        flat_PF: torch.Tensor,
        T: int,
        offset: int,
        rows_N: torch.Tensor,
        latents_N: torch.Tensor,
        values_N: torch.Tensor,
        groups_N: torch.Tensor,
    ) -> None:
        """Merge this batch's firings into each (latent, interval)'s bottom-m-key sample."""
        M = self.settings.samples_per_interval
        keys_N = torch.rand(len(values_N), generator=self._generator).to(values_N.device)
        # Order by group, and by key inside a group: sort by key, then stably by group.
        order = torch.argsort(keys_N)
        sorted_groups, by_group = groups_N[order].sort(stable=True)
        order = order[by_group]
        rank = torch.arange(len(order), device=order.device) - torch.searchsorted(sorted_groups, sorted_groups)
        chosen = order[rank < M]
        slots = rank[rank < M]
        G, C = self.sample_key_GM.shape[0], self.settings.context
        new_key = torch.full((G, M), _EMPTY_KEY, dtype=torch.float32, device=flat_PF.device)
        new_value = torch.zeros(G, M, dtype=torch.float32, device=flat_PF.device)
        new_location = torch.full((G, M), -1, dtype=torch.int64, device=flat_PF.device)
        new_context = torch.zeros(G, M, C, dtype=torch.float32, device=flat_PF.device)
        groups = groups_N[chosen]
        new_key[groups, slots] = keys_N[chosen]
        new_value[groups, slots] = values_N[chosen]
        new_location[groups, slots] = rows_N[chosen] + offset
        new_context[groups, slots] = self._contexts(flat_PF, rows_N[chosen], latents_N[chosen], T)
        keys = torch.cat([self.sample_key_GM, new_key], dim=1)
        keep = keys.topk(M, dim=1, largest=False).indices
        self.sample_key_GM = keys.gather(1, keep)
        self.sample_value_GM = torch.cat([self.sample_value_GM, new_value], dim=1).gather(1, keep)
        self.sample_location_GM = torch.cat([self.sample_location_GM, new_location], dim=1).gather(1, keep)
        contexts = torch.cat([self.sample_context_GMC, new_context], dim=1)
        self.sample_context_GMC = contexts.gather(1, keep.unsqueeze(-1).expand(-1, -1, C))

    # --- result -------------------------------------------------------------------------------------
    def result(self) -> LatentStatistics:
        """The statistics so far, on the CPU."""
        N, M, C = self.settings.intervals, self.settings.samples_per_interval, self.settings.context
        F = self.width
        return LatentStatistics(
            n_tokens=self.n_tokens,
            window_length=self.window_length,
            count_F=self.count_F.cpu(),
            sum_F=self.sum_F.cpu(),
            max_F=self.top_value_FK[:, 0].cpu(),
            scale_F=self.scale_F.cpu(),
            histogram_FH=self.histogram_FH.cpu(),
            top_value_FK=self.top_value_FK.cpu(),
            top_location_FK=self.top_location_FK.cpu(),
            top_context_FKC=self.top_context_FKC.cpu(),
            sample_value_FNM=self.sample_value_GM.view(F, N, M).cpu(),
            sample_location_FNM=self.sample_location_GM.view(F, N, M).cpu(),
            sample_context_FNMC=self.sample_context_GMC.view(F, N, M, C).cpu(),
        )
