"""Data: text corpora and token windows, the activation stream, and the on-disk activation cache."""

from saescope.data.corpus import CorpusConfig, corpus_windows, iter_documents
from saescope.data.documents import CorpusError, Document
from saescope.data.embedded import SOURCES, build_embedded_corpus, embedded_corpus_stats
from saescope.data.split import is_heldout
from saescope.data.windows import (
    TokenWindow,
    WindowBatch,
    iter_token_batches,
    iter_token_windows,
    special_token_ids,
    special_token_mask,
)

__all__ = [
    "SOURCES",
    "CorpusConfig",
    "CorpusError",
    "Document",
    "TokenWindow",
    "WindowBatch",
    "build_embedded_corpus",
    "corpus_windows",
    "embedded_corpus_stats",
    "is_heldout",
    "iter_documents",
    "iter_token_batches",
    "iter_token_windows",
    "special_token_ids",
    "special_token_mask",
]
