"""Packing documents into BOS-led token windows, their shuffles and chat mask, batches, and spread samples."""

from __future__ import annotations

import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from corpus_fixtures import BOS, EOS, PAD, UNK, long_documents, random_documents, token_ids, window_ids
from transformers import AutoTokenizer

from saescope.data.documents import Document
from saescope.data.windows import (
    TokenWindow,
    WindowBatch,
    iter_token_batches,
    iter_token_windows,
    special_token_ids,
    special_token_mask,
    spread_order,
    spread_windows,
    stack_windows,
    windows_for_tokens,
)
from tiny_models import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer()


def test_every_window_has_context_size_tokens_and_starts_with_bos(tokenizer: Any) -> None:
    windows = window_ids(iter_token_windows(random_documents(60), tokenizer, context_size=16, seed=0))
    assert len(windows) > 10
    for window in windows:
        assert window.shape == (16,)
        assert window.dtype == torch.long
        assert window[0].item() == BOS
        assert BOS not in window[1:].tolist()


def test_windows_without_bos_are_the_documents_joined_by_eos(tokenizer: Any) -> None:
    documents = random_documents(50)
    windows = window_ids(iter_token_windows(documents, tokenizer, context_size=12, seed=0, shuffle_buffer=0))
    stream = torch.cat([window[1:] for window in windows]).tolist()
    expected = [token for document in documents for token in [*token_ids(document.text), EOS]]
    # Only the incomplete last window is dropped: fewer than context_size - 1 tokens.
    assert stream == expected[: len(stream)]
    assert 0 <= len(expected) - len(stream) < 11


def test_full_shuffle_is_a_permutation_of_the_documents(tokenizer: Any) -> None:
    documents = random_documents(80)
    windows = window_ids(iter_token_windows(documents, tokenizer, context_size=9, seed=3))
    stream = torch.cat([window[1:] for window in windows]).tolist()
    segments: list[list[int]] = [[]]
    for token in stream:
        if token == EOS:
            segments.append([])
        else:
            segments[-1].append(token)
    complete = Counter(tuple(segment) for segment in segments[:-1])
    originals = Counter(tuple(token_ids(document.text)) for document in documents)
    # Every document appears once, whole; only the last few can be lost with the dropped last window.
    assert not complete - originals
    assert complete.total() >= originals.total() - 4
    order = [tuple(segment) for segment in segments[:-1]]
    in_given_order = [tuple(token_ids(document.text)) for document in documents]
    assert order != in_given_order[: len(order)]  # shuffled, not in the given order


def test_same_seed_gives_the_same_windows_and_another_seed_another_order(tokenizer: Any) -> None:
    documents = random_documents(60)

    def run(seed: int, **options: Any) -> list[list[int]]:
        return [
            w.tolist()
            for w in window_ids(iter_token_windows(documents, tokenizer, context_size=16, seed=seed, **options))
        ]

    assert run(0) == run(0)
    assert run(0) != run(1)
    assert run(0, epoch=1) not in (run(0), run(1))
    # The full shuffle depends on document ids, not on the order they arrive in.
    reversed_run = [
        w.tolist() for w in window_ids(iter_token_windows(documents[::-1], tokenizer, context_size=16, seed=0))
    ]
    assert reversed_run == run(0)
    assert run(0, shuffle_buffer=8) == run(0, shuffle_buffer=8)
    assert run(0, shuffle_buffer=8) != run(1, shuffle_buffer=8)


def test_buffered_shuffle_keeps_every_document(tokenizer: Any) -> None:
    documents = [Document(f"d{i}", "s", "g", f"w{i}") for i in range(40)]
    windows = window_ids(iter_token_windows(documents, tokenizer, context_size=3, seed=5, shuffle_buffer=7))
    words = [w[1].item() for w in windows]  # each window: BOS, one word, its EOS
    assert all(w[2].item() == EOS for w in windows)
    assert sorted(words) == [i + 4 for i in range(40)]
    assert words != sorted(words)


def window_documents(windows: list[torch.Tensor]) -> list[set[int]]:
    return [{token - 4 for token in window[1:].tolist() if token != EOS} for window in windows]


def test_window_shuffle_mixes_long_documents_and_keeps_every_window(tokenizer: Any) -> None:
    documents = long_documents(12, words=60)  # 61 tokens each with EOS: ~8 windows of 7 stream tokens

    def run(window_shuffle: int, **options: Any) -> list[torch.Tensor]:
        return window_ids(
            iter_token_windows(
                documents, tokenizer, context_size=8, seed=0, shuffle_buffer=0, window_shuffle=window_shuffle, **options
            )
        )

    in_order, shuffled = run(0), run(32)
    assert sorted(w.tolist() for w in shuffled) == sorted(w.tolist() for w in in_order)
    # In stream order the first eight windows hold the first two documents; shuffled, many more.
    first_in_order = set().union(*window_documents(in_order[:8]))
    first_shuffled = set().union(*window_documents(shuffled[:8]))
    assert len(first_in_order) <= 2
    assert len(first_shuffled) >= 5
    assert [w.tolist() for w in run(32)] == [w.tolist() for w in shuffled]  # seeded
    assert [w.tolist() for w in run(32, epoch=1)] != [w.tolist() for w in shuffled]
    with pytest.raises(ValueError, match="window_shuffle must be >= 0"):
        run(-1)


def test_batches_stack_windows(tokenizer: Any) -> None:
    documents = random_documents(40)
    windows = window_ids(iter_token_windows(documents, tokenizer, context_size=10, seed=1))
    batches = list(iter_token_batches(documents, tokenizer, batch_size=4, context_size=10, seed=1))
    assert all(batch.ids_BT.shape[1:] == (10,) and batch.ids_BT.dtype == torch.long for batch in batches)
    assert torch.equal(torch.cat([batch.ids_BT for batch in batches]), torch.stack(windows))
    assert all(bool(batch.chat_keep_BT.all()) for batch in batches)
    full = list(iter_token_batches(documents, tokenizer, batch_size=4, context_size=10, seed=1, drop_last=True))
    assert all(batch.n_windows == 4 for batch in full)
    assert len(full) == len(windows) // 4


def test_tokenizer_saved_in_a_model_folder_gives_the_same_windows(tiny_model_dir: Path, tokenizer: Any) -> None:
    loaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    documents = random_documents(20)
    ours = window_ids(iter_token_windows(documents, tokenizer, context_size=8))
    theirs = window_ids(iter_token_windows(documents, loaded, context_size=8))
    assert torch.equal(torch.stack(ours), torch.stack(theirs))


def test_window_arguments_are_checked(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="context_size"):
        next(iter_token_windows(["w1"], tokenizer, context_size=1))
    bare = types.SimpleNamespace(bos_token_id=None, eos_token_id=1)
    with pytest.raises(ValueError, match="bos_token_id"):
        next(iter_token_windows(["w1"], bare, context_size=4))


def test_special_token_mask_drops_bos_eos_pad_and_other_special_tokens(tokenizer: Any) -> None:
    ids_BT = torch.tensor([[BOS, 10, 11, EOS, 12], [BOS, 13, UNK, PAD, PAD]])
    expected = torch.tensor([[False, True, True, False, True], [False, True, False, False, False]])
    assert special_token_ids(tokenizer) == {PAD, EOS, BOS, UNK}
    assert torch.equal(special_token_mask(ids_BT, tokenizer), expected)
    # With explicit ids, only those are dropped (here: the unknown token is kept).
    assert special_token_mask(ids_BT, [PAD, EOS, BOS]).tolist()[1] == [False, True, True, False, False]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 100, 679])
def test_spread_order_is_a_permutation(n: int) -> None:
    assert sorted(spread_order(n)) == list(range(n))


@pytest.mark.parametrize("n", [64, 100, 679])
def test_every_power_of_two_prefix_of_the_spread_order_is_evenly_spaced(n: int) -> None:
    order = spread_order(n)
    for k in range(1, 7):
        count = 2**k
        prefix = sorted(order[:count])
        gaps = [b - a for a, b in zip(prefix, [*prefix[1:], prefix[0] + n], strict=True)]
        assert prefix[0] == 0
        assert all(abs(gap - n / count) <= 1 for gap in gaps), (count, prefix)


def test_spread_windows_sample_the_whole_pool_not_its_first_windows() -> None:
    windows = (torch.tensor([i]) for i in range(1000))  # a stream longer than the pool
    taken = [int(w) for w in spread_windows(windows, needed=10, pool_factor=8)]
    assert sorted(taken) == list(range(80))  # the pool: the first 80 windows, each once
    first = taken[:10]
    assert len({i // 20 for i in first}) == 4  # the first ten reach every quarter of the pool


def test_spread_windows_of_a_short_stream_yield_all_of_it() -> None:
    assert sorted(int(w) for w in spread_windows((torch.tensor([i]) for i in range(5)), needed=10)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="needed"):
        list(spread_windows(iter([]), needed=0))


def test_windows_for_tokens_counts_the_stream_tokens_of_a_window() -> None:
    assert windows_for_tokens(255, 256) == 1
    assert windows_for_tokens(256, 256) == 2
    assert windows_for_tokens(1, 1024) == 1


# --- window batches ---------------------------------------------------------------------------------


def test_kept_positions_drop_special_tokens_and_the_positions_the_chat_mask_excludes() -> None:
    ids_BT = torch.tensor([[BOS, 10, 11, EOS, 12], [BOS, 13, 14, PAD, PAD]])
    chat_keep_BT = torch.tensor([[True, False, True, True, True], [True, True, False, True, True]])
    kept = WindowBatch(ids_BT, chat_keep_BT).kept_positions([PAD, EOS, BOS])
    assert kept.tolist() == [[False, False, True, False, True], [False, True, False, False, False]]
    assert torch.equal(
        WindowBatch.of_ids(ids_BT).kept_positions([PAD, EOS, BOS]), special_token_mask(ids_BT, [0, 1, 2])
    )


def test_a_window_batch_refuses_a_mask_that_does_not_match_its_ids() -> None:
    ids_BT = torch.full((2, 4), 7)
    with pytest.raises(ValueError, match=r"same shape; got \(2, 4\) and \(2, 3\)"):
        WindowBatch(ids_BT, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"must be a bool tensor; got torch\.int64"):
        WindowBatch(ids_BT, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_windows must be >= 1"):
        next(stack_windows([TokenWindow.of_ids(ids_BT[0])], 0))
