"""Top examples shipped with a release, in Gemma Scope 2's ``examples.safetensors`` (:mod:`saescope.release.examples`).

* :func:`examples_from_index`: a dictionary's top examples, densities and logit effects from a feature index, as
  the file holds them (``saescope export`` writes one per Gemma Scope 2 folder when the run has an index).
* :func:`shipped_example_rows`: a release's file as rows of the index's examples table (interval
  :data:`saescope.explore.store.SHIPPED`), so the explorer shows an official folder's contexts next to its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saescope.explore.store import SHIPPED, IndexReader, SaeRow, pack_context
from saescope.release.examples import EXAMPLES_FILE, ReleaseExamples, read_examples

#: Fill of the unused slots of the (F, K) tables and of the token rows shorter than the longest.
EMPTY = -1
PAD_TOKEN = 0


def examples_from_index(reader: IndexReader, sae: SaeRow) -> ReleaseExamples:
    """The top examples of every latent of ``sae`` in ``reader``'s index (by decreasing activation), the token
    windows they come from, each latent's density and its logit effects."""
    rows = reader.top_example_rows(sae)
    K = max((rank for _, rank, _, _, _ in rows), default=-1) + 1
    window_ids = sorted({window for _, _, window, _, _ in rows})
    windows = reader.window_tokens(window_ids)
    row_of = {window: i for i, window in enumerate(window_ids)}
    length = max((len(tokens) for tokens in windows.values()), default=1)
    tokens_SL = np.full((len(window_ids), length), PAD_TOKEN, dtype=np.int32)
    for window, i in row_of.items():
        tokens_SL[i, : len(windows[window])] = windows[window]
    F = sae.width
    seq_ids_FK = np.full((F, K), EMPTY, dtype=np.int32)
    positions_FK = np.full((F, K), EMPTY, dtype=np.int32)
    activations_FK = np.zeros((F, K), dtype=np.float32)
    for latent, rank, window, position, value in rows:
        seq_ids_FK[latent, rank], positions_FK[latent, rank] = row_of[window], position
        activations_FK[latent, rank] = value
    summaries = reader.latent_summaries(sae)
    tables = {name: _logit_table([s[column] for s in summaries]) for name, column in (("top", 1), ("bottom", 2))}
    return ReleaseExamples(
        tokens_SL, seq_ids_FK, positions_FK, activations_FK,
        feature_frequencies_F=np.array([s[0] for s in summaries], dtype=np.float32),
        top_tokens_Fn=tables["top"][0], top_logits_Fn=tables["top"][1],
        bottom_tokens_Fn=tables["bottom"][0], bottom_logits_Fn=tables["bottom"][1],
    )  # fmt: skip


def _logit_table(pairs_per_latent: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(F, n) token ids and values of per-latent [token id, value] lists (short lists padded with -1 / NaN)."""
    n = max((len(pairs) for pairs in pairs_per_latent), default=0)
    ids_Fn = np.full((len(pairs_per_latent), n), EMPTY, dtype=np.int32)
    values_Fn = np.full((len(pairs_per_latent), n), np.nan, dtype=np.float32)
    for f, pairs in enumerate(pairs_per_latent):
        for j, (token_id, value) in enumerate(pairs):
            ids_Fn[f, j], values_Fn[f, j] = int(token_id), float(value)
    return ids_Fn, values_Fn


def read_shipped(folder: Path, width: int) -> ReleaseExamples | None:
    """The ``examples.safetensors`` of a dictionary folder, checked against its ``width``; None if it has none."""
    path = folder / EXAMPLES_FILE
    return read_examples(path, width=width) if path.is_file() else None


@dataclass(frozen=True)
class ShippedRows:
    """A release file as index rows: examples-table rows and the token windows they point into."""

    examples: list[tuple[Any, ...]]
    windows: dict[int, np.ndarray]


def shipped_example_rows(
    examples: ReleaseExamples, sae_id: int, *, top_k: int, first_window: int, context_before: int, context_after: int
) -> ShippedRows:
    """Rows of the examples table (interval SHIPPED, ranks 0..top_k-1 per latent by decreasing activation) for
    the ``top_k`` strongest examples of every latent, and their token rows as windows numbered from
    ``first_window``. The file gives each example's own activation only: the other context values are zero."""
    window_of: dict[int, int] = {}
    rows: list[tuple[Any, ...]] = []
    focus = np.zeros(context_before + 1 + context_after, dtype=np.float32)
    for latent in range(examples.width):
        for rank, (sequence, position, value) in enumerate(examples.top(latent, top_k)):
            window = window_of.setdefault(sequence, first_window + len(window_of))
            focus[context_before] = value
            rows.append((sae_id, latent, SHIPPED, rank, window, position, value, pack_context(focus)))
    windows = {window: examples.tokens_SL[sequence] for sequence, window in window_of.items()}
    return ShippedRows(rows, windows)


def write_release_examples(index: Path, release_folders: dict[str, Path]) -> list[Path]:
    """Write an ``examples.safetensors`` into each folder of ``release_folders`` (index dictionary name -> Gemma
    Scope 2 folder) whose dictionary ``index`` holds; returns the files written."""
    from saescope.release.examples import write_examples

    reader = IndexReader(index)
    written = []
    for name, folder in release_folders.items():
        sae = reader.sae(name)
        if sae is None or sae.parent is not None:
            continue
        path = folder / EXAMPLES_FILE
        write_examples(path, examples_from_index(reader, sae))
        written.append(path)
    return written
