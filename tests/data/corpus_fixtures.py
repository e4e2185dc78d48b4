"""Shared helpers of the corpus tests: random documents over the tiny word-level vocabulary of tests/conftest."""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch

from saescope.data.documents import Document
from saescope.data.windows import TokenWindow

PAD, EOS, BOS, UNK = 0, 1, 2, 3


def random_documents(n: int, seed: int = 0, max_words: int = 40) -> list[Document]:
    rng = random.Random(seed)
    return [
        Document(
            f"doc-{i}", "synthetic", "test", " ".join(f"w{rng.randrange(92)}" for _ in range(rng.randint(1, max_words)))
        )
        for i in range(n)
    ]


def window_ids(windows: Iterable[TokenWindow]) -> list[torch.Tensor]:
    """The (T,) ids of plain-text windows, checking that their chat mask keeps every position."""
    every = list(windows)
    assert all(bool(window.chat_keep_T.all()) for window in every)
    return [window.ids_T for window in every]


def token_ids(text: str) -> list[int]:
    return [int(word[1:]) + 4 for word in text.split()]  # the tiny vocabulary: w<i> has id i + 4


def long_documents(n: int, words: int) -> list[Document]:
    """Documents of one repeated word each (w<i>, so id i + 4 names the document), `words` words long."""
    return [Document(f"long-{i}", "s", "g", " ".join([f"w{i}"] * words)) for i in range(n)]
