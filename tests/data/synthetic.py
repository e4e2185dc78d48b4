"""Deterministic synthetic token activations, a pure function of the window index (so a resumed
stream is exactly the same as an uninterrupted one)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from saescope.data.activations import TokenActivations
from saescope.models.sites import Site, SiteKind

SITES = (Site(0, SiteKind.RES), Site(1, SiteKind.ATT))
WIDTHS = {SITES[0]: 8, SITES[1]: 12}
TOKENS_PER_WINDOW = 5


def window_chunk(window: int) -> TokenActivations:
    generator = torch.Generator().manual_seed(window)
    acts = {site: torch.randn(TOKENS_PER_WINDOW, WIDTHS[site], generator=generator) for site in SITES}
    # Column 0 of the first site carries a unique token number, to check exactly-once reading.
    acts[SITES[0]][:, 0] = torch.arange(TOKENS_PER_WINDOW) + window * TOKENS_PER_WINDOW
    return TokenActivations(
        acts=acts,
        token_ids_N=torch.arange(TOKENS_PER_WINDOW) + 100,
        positions_N=torch.arange(1, TOKENS_PER_WINDOW + 1),
        windows_N=torch.full((TOKENS_PER_WINDOW,), window),
        n_windows=1,
    )


def synthetic_stream(first_window: int = 0, n_windows: int = 1000) -> Iterator[TokenActivations]:
    for window in range(first_window, n_windows):
        yield window_chunk(window)
