"""The feature explorer: a local Neuronpedia for every dictionary of a suite.

* :func:`build_index` streams held-out text through the model once and writes, per latent, its statistics,
  top and interval-sampled examples, histogram, logit effects and neighbours into one SQLite file
  (:mod:`saescope.explore.store`); ``saescope index RUN`` runs it.
* :func:`saescope.explore.server.create_app` serves that file as a JSON API and a web page, with live search
  by text and steering (``saescope serve RUN``).
* :mod:`saescope.explore.export` writes Neuronpedia-style feature JSON and a static site.
"""

from __future__ import annotations

from saescope.explore.index import DEFAULT_TOKENS, IndexConfig, IndexSummary, build_index
from saescope.explore.sources import Dictionary, DictionarySet, read_dictionaries
from saescope.explore.statistics import ExampleSettings
from saescope.explore.store import INDEX_FILE, FeatureIndexError, IndexReader

__all__ = [
    "DEFAULT_TOKENS",
    "INDEX_FILE",
    "Dictionary",
    "DictionarySet",
    "ExampleSettings",
    "FeatureIndexError",
    "IndexConfig",
    "IndexReader",
    "IndexSummary",
    "build_index",
    "read_dictionaries",
]
