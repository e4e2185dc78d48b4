""":class:`ExportedSAE`: one trained dictionary (read by :mod:`saescope.dictionaries.folder`) as written into a
release."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saescope.dictionaries.folder import TrainedSAE


@dataclass(frozen=True)
class ExportedSAE:
    """One dictionary written into a release: which, where (relative to the release root), named by which L0."""

    entry: TrainedSAE
    path: Path
    l0: int
