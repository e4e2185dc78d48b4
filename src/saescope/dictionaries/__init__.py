"""A trained dictionary as data: where it reads and writes (:class:`DictionarySites`) and its folder on disk
(:mod:`saescope.dictionaries.folder`, written by training and read by evaluation, release, the explorer and
``--init-from``). Below train/, eval/, release/ and explore/: it imports none of them."""

from __future__ import annotations

from saescope.dictionaries.folder import (
    DictionaryFormatError,
    TrainedSAE,
    eval_folder,
    metrics_path,
    read_suite,
    read_trained_sae,
    write_dictionary_folder,
    write_metrics,
)
from saescope.dictionaries.sites import DictionarySites, HoldsSites, SpansSites

__all__ = [
    "DictionaryFormatError",
    "DictionarySites",
    "HoldsSites",
    "SpansSites",
    "TrainedSAE",
    "eval_folder",
    "metrics_path",
    "read_suite",
    "read_trained_sae",
    "write_dictionary_folder",
    "write_metrics",
]
