"""Pinned token windows: what the model reads and which positions are kept must not change when the corpus code
is reorganised (the hashes were taken from the code before it was split into modules)."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Collection, Iterable
from pathlib import Path

import pytest
import torch

from chat_fixtures import SPECIAL, build_chat_tokenizer, write_conversations
from saescope.data.chat import ChatFormat
from saescope.data.corpus import CorpusConfig, corpus_windows
from saescope.data.documents import Document
from saescope.data.windows import TokenWindow, WindowBatch, iter_token_windows
from tiny_models import build_tiny_tokenizer


def windows_digest(windows_WT: torch.Tensor, keep_WT: torch.Tensor) -> str:
    """SHA-256 of the ids the model reads and of the kept positions."""
    digest = hashlib.sha256(windows_WT.to(torch.int64).numpy().tobytes())
    digest.update(keep_WT.to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_windows(
    windows: Iterable[TokenWindow], n: int, special: Collection[int] = SPECIAL
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` windows' model ids and kept positions (special tokens and chat-masked positions dropped)."""
    batch = WindowBatch.stack(list(itertools.islice(windows, n)))
    return batch.ids_BT, batch.kept_positions(special)


def word_documents(n: int, seed: int) -> list[Document]:
    rng = random.Random(seed)
    words = ["user", "model", *(f"w{i}" for i in range(80))]
    return [
        Document(f"doc-{i}", "pin", "test", " ".join(rng.choice(words) for _ in range(rng.randint(1, 30))))
        for i in range(n)
    ]


def test_plain_text_windows_are_unchanged() -> None:
    windows = iter_token_windows(word_documents(120, 1), build_tiny_tokenizer(), 16, seed=3, window_shuffle=7)
    ids_WT, keep_WT = read_windows(windows, 40)
    assert ids_WT.shape == (40, 16)
    assert windows_digest(ids_WT, keep_WT) == PLAIN_DIGEST


def test_chat_document_windows_are_unchanged() -> None:
    tokenizer = build_chat_tokenizer()
    windows = iter_token_windows(
        word_documents(80, 2), tokenizer, 16, seed=5, shuffle_buffer=9, window_shuffle=4, chat=ChatFormat(tokenizer)
    )
    ids_WT, keep_WT = read_windows(windows, 40)
    assert windows_digest(ids_WT, keep_WT) == CHAT_DIGEST


def test_conversation_corpus_windows_are_unchanged(tmp_path: Path) -> None:
    source = write_conversations(tmp_path / "rollouts.jsonl", 50, seed=4)
    corpus = CorpusConfig(
        source=str(source), text_field="messages", context_size=16, heldout_fraction=0.1, chat_template="tokenizer",
        window_shuffle_tokens=64, seed=2,
    )  # fmt: skip
    ids_WT, keep_WT = read_windows(corpus_windows(corpus, build_chat_tokenizer()), 40)
    assert windows_digest(ids_WT, keep_WT) == CONVERSATION_DIGEST


@pytest.mark.slow
def test_embedded_corpus_windows_are_unchanged() -> None:
    from transformers import AutoTokenizer

    from saescope.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS, ensure_embedded_converted

    folder, _ = ensure_embedded_converted(EMBEDDED_MODELS[DEFAULT_MODEL])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    special = sorted(int(i) for i in tokenizer.all_special_ids)
    for split, digest in (("train", EMBEDDED_TRAIN_DIGEST), ("heldout", EMBEDDED_HELDOUT_DIGEST)):
        windows = corpus_windows(CorpusConfig(context_size=128), tokenizer, split)
        assert windows_digest(*read_windows(windows, 24, special)) == digest, split


PLAIN_DIGEST = "97f8c9b987f22b241fe8144f38db7676224631aa261e94b7be0b500fd24ed646"
CHAT_DIGEST = "4fdc1f57ff49b898169a7448786cd88be2183b3cc920f4791037c4d2c016d08c"
CONVERSATION_DIGEST = "8ff13b272d9415457fef3d602d12336b08d9bc57a0ebda20e697d22ac255a7f2"
EMBEDDED_TRAIN_DIGEST = "c5e25a75faa426de7db6d7b2cdf49339abf5ed43db9803e934a6dce21e72aaad"
EMBEDDED_HELDOUT_DIGEST = "a48b8e1f41e87e04b7ff02cfac814a93dc79fdc0aa1619f51a98129d2b268696"
