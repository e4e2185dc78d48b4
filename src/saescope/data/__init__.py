"""Data: text corpora and token windows, the activation stream, and the on-disk activation cache."""

from saescope.data.corpus import (
    SOURCES,
    CorpusConfig,
    CorpusError,
    Document,
    build_embedded_corpus,
    corpus_windows,
    embedded_corpus_stats,
    is_heldout,
    iter_documents,
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
