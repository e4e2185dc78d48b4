"""A trained run as the release sees it: the run's dictionary folders (read by :mod:`saescope.dictionaries.folder`,
re-exported here) and :class:`ExportedSAE`, one of them written into a release."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saescope.dictionaries.folder import (
    CONFIG,
    DICTIONARY_FORMAT,
    L0_FROM_METRICS,
    L0_FROM_TRAINING,
    METRICS,
    WEIGHTS,
    TrainedSAE,
    read_suite,
    read_trained_sae,
)

__all__ = [
    "CONFIG",
    "DICTIONARY_FORMAT",
    "L0_FROM_METRICS",
    "L0_FROM_TRAINING",
    "METRICS",
    "WEIGHTS",
    "ExportedSAE",
    "TrainedSAE",
    "read_suite",
    "read_trained_sae",
]


@dataclass(frozen=True)
class ExportedSAE:
    """One dictionary written into a release: which, where (relative to the release root), named by which L0."""

    entry: TrainedSAE
    path: Path
    l0: int
