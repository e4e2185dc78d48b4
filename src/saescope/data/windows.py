"""Documents -> fixed-length token windows that start with BOS, and spread samples of them (SPEC §2.3, §6.4).

Documents are put in a seeded order, tokenised without special tokens, each followed by EOS, concatenated, and
cut into windows of ``context_size`` tokens, each being ``[BOS] + context_size - 1`` stream tokens.
``special_token_mask`` marks the positions whose activations are kept (everything except BOS, EOS, padding and
other special tokens).

Chat formatting (:mod:`saescope.data.chat`): each document is wrapped in the chat template as a user turn
followed by the model-turn prefix (a conversation is rendered as it is), and the user-turn prefix positions are
dropped too. Those positions hold ordinary tokens, so their ids carry ``EXCLUDED_POSITION_BIT`` through packing
and batching; ``special_token_mask`` reads the bit and ``window_token_ids`` clears it before the ids reach a model.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch

from saescope.data.chat import ChatFormat, ChatTemplateError, conversation_chat, document_chat
from saescope.data.documents import Document

#: Set on the id of a window position that a chat corpus's mask policy drops although it is an ordinary
#: token (the user-turn prefix). A window stays one int64 tensor through packing, batching, caching and
#: rank splitting, with its mask inside; real vocabularies are far below 2^40.
EXCLUDED_POSITION_BIT = 1 << 40

_ORDER_SALT = "saescope-order:"


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Every special token id of a Hugging Face tokenizer: BOS, EOS, pad, unk and the rest."""
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attribute, None)
        if isinstance(value, int):
            ids.add(value)
    return frozenset(ids)


def special_token_mask(ids_BT: torch.Tensor, tokenizer_or_ids: Any) -> torch.Tensor:
    """Bool tensor shaped like ``ids_BT``: True at the positions to KEEP, False at special tokens and at
    positions a chat corpus's mask policy drops (ids carrying ``EXCLUDED_POSITION_BIT``).

    ``tokenizer_or_ids`` is a tokenizer (its ``special_token_ids``) or a collection of token ids.
    """
    if hasattr(tokenizer_or_ids, "all_special_ids") or hasattr(tokenizer_or_ids, "bos_token_id"):
        special = special_token_ids(tokenizer_or_ids)
    else:
        special = frozenset(int(i) for i in tokenizer_or_ids)
    special_ids = torch.tensor(sorted(special), dtype=ids_BT.dtype, device=ids_BT.device)
    return ~torch.isin(ids_BT, special_ids) & (ids_BT < EXCLUDED_POSITION_BIT)


def window_token_ids(ids_BT: torch.Tensor) -> torch.Tensor:
    """The token ids of windows with ``EXCLUDED_POSITION_BIT`` cleared: what the model reads."""
    return ids_BT & (EXCLUDED_POSITION_BIT - 1)


def _required_id(tokenizer: Any, attribute: str, override: int | None) -> int:
    value = override if override is not None else getattr(tokenizer, attribute, None)
    if not isinstance(value, int):
        raise ValueError(f"the tokenizer has no {attribute}; pass {attribute}=... explicitly")
    return value


def _order_key(seed: int, epoch: int, document_id: str) -> bytes:
    return hashlib.sha256(f"{_ORDER_SALT}{seed}:{epoch}:{document_id}".encode()).digest()


_Item = TypeVar("_Item")


def _ordered_documents(
    documents: Iterable[Document | str], seed: int, epoch: int, shuffle_buffer: int | None
) -> Iterator[Document | str]:
    items = (
        (document.id if isinstance(document, Document) else str(index), document)
        for index, document in enumerate(documents)
    )
    if shuffle_buffer == 0:
        yield from (document for _, document in items)
    elif shuffle_buffer is None:
        every = list(items)
        order = sorted(range(len(every)), key=lambda i: (_order_key(seed, epoch, every[i][0]), i))
        yield from (every[i][1] for i in order)
    else:
        rng = random.Random(int.from_bytes(_order_key(seed, epoch, "")[:8], "big"))
        yield from _buffer_shuffled((document for _, document in items), shuffle_buffer, rng)


def _buffer_shuffled(items: Iterable[_Item], size: int, rng: random.Random) -> Iterator[_Item]:
    """`items` through a buffer of `size`: each arrival takes a random slot, whose item is emitted; the rest
    come out shuffled at the end."""
    buffer: list[_Item] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def _token_lists(
    documents: Iterable[Document | str], tokenizer: Any, batch_size: int, chat: ChatFormat | None, bos: int
) -> Iterator[list[int]]:
    batch: list[Document | str] = []
    for document in documents:
        batch.append(document)
        if len(batch) == batch_size:
            yield from _encode(tokenizer, batch, chat, bos)
            batch = []
    if batch:
        yield from _encode(tokenizer, batch, chat, bos)


def _encode(tokenizer: Any, documents: list[Document | str], chat: ChatFormat | None, bos: int) -> list[list[int]]:
    if chat is not None:
        chats = [
            conversation_chat(d.messages) if isinstance(d, Document) and d.messages is not None
            else document_chat(d.text if isinstance(d, Document) else d)
            for d in documents
        ]  # fmt: skip
        flagged = []
        for encoded in chat.encode(chats):
            # The window's own BOS starts each window; inside a window documents follow an EOS, as in plain text.
            start = 1 if encoded.ids[:1] == [bos] else 0
            ids, keep = encoded.ids[start:], encoded.keep[start:]
            flagged.append([t if k else t | EXCLUDED_POSITION_BIT for t, k in zip(ids, keep, strict=True)])
        return flagged
    for document in documents:
        if isinstance(document, Document) and document.messages is not None:
            raise ChatTemplateError(
                f"document {document.id!r} is a conversation (a messages list): set a chat template to render "
                "it (CorpusConfig.chat_template, --chat or --chat-template)"
            )
    texts = [d.text if isinstance(d, Document) else d for d in documents]
    # verbose=False: documents are longer than the model's context on purpose (they are packed later).
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return [list(ids) for ids in encoded["input_ids"]]


def iter_token_windows(
    documents: Iterable[Document | str],
    tokenizer: Any,
    context_size: int = 1024,
    seed: int = 0,
    *,
    epoch: int = 0,
    shuffle_buffer: int | None = None,
    window_shuffle: int = 0,
    tokenize_batch_size: int = 128,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    chat: ChatFormat | None = None,
) -> Iterator[torch.Tensor]:
    """(T,) LongTensor windows, T = ``context_size``: ``[BOS]`` then ``T - 1`` tokens of the stream.

    The stream is the documents in a seeded order, each tokenised without special tokens and followed by
    EOS; a window may start or end inside a document. The last, incomplete window is dropped.

    Order: ``shuffle_buffer=None`` sorts all documents by a hash of (seed, epoch, id): a full shuffle,
    independent of the order they arrive in (holds every text in memory). ``shuffle_buffer=n`` shuffles
    a stream through an n-document buffer instead; ``0`` keeps the given order. Plain strings count as
    documents whose id is their position. ``window_shuffle=n`` then draws the windows at random from a buffer
    of n consecutive windows (seeded by seed and epoch), so that neighbouring windows come from different
    documents; ``0`` keeps them in stream order.

    With ``chat``, each document is rendered as a user turn plus the model-turn prefix (a conversation as
    it is), the template's leading BOS dropped, and positions its mask excludes carry ``EXCLUDED_POSITION_BIT``.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be >= 2 (BOS plus at least one token); got {context_size}")
    if shuffle_buffer is not None and shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be None or >= 0; got {shuffle_buffer}")
    if window_shuffle < 0:
        raise ValueError(f"window_shuffle must be >= 0; got {window_shuffle}")
    windows = _packed_windows(documents, tokenizer, context_size, seed, epoch, shuffle_buffer, tokenize_batch_size,
                              _required_id(tokenizer, "bos_token_id", bos_token_id),
                              _required_id(tokenizer, "eos_token_id", eos_token_id), chat)  # fmt: skip
    if window_shuffle == 0:
        return windows
    rng = random.Random(int.from_bytes(_order_key(seed, epoch, "windows")[:8], "big"))
    return _buffer_shuffled(windows, window_shuffle, rng)


def _packed_windows(
    documents: Iterable[Document | str],
    tokenizer: Any,
    context_size: int,
    seed: int,
    epoch: int,
    shuffle_buffer: int | None,
    tokenize_batch_size: int,
    bos: int,
    eos: int,
    chat: ChatFormat | None,
) -> Iterator[torch.Tensor]:
    """The ordered documents packed into ``[BOS] + T - 1`` token windows, in stream order."""
    span = context_size - 1
    pending: list[int] = []
    ordered = _ordered_documents(documents, seed, epoch, shuffle_buffer)
    for ids in _token_lists(ordered, tokenizer, tokenize_batch_size, chat, bos):
        pending.extend(ids)
        pending.append(eos)
        n_windows = len(pending) // span
        if n_windows == 0:
            continue
        body_WS = torch.tensor(pending[: n_windows * span], dtype=torch.long).view(n_windows, span)
        del pending[: n_windows * span]
        windows_WT = torch.cat([torch.full((n_windows, 1), bos, dtype=torch.long), body_WS], dim=1)
        yield from windows_WT


def iter_token_batches(
    documents: Iterable[Document | str],
    tokenizer: Any,
    batch_size: int,
    context_size: int = 1024,
    seed: int = 0,
    *,
    drop_last: bool = False,
    **window_options: Any,
) -> Iterator[torch.Tensor]:
    """(B, T) LongTensor batches of ``iter_token_windows``; the last one may be smaller unless ``drop_last``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    batch: list[torch.Tensor] = []
    for window_T in iter_token_windows(documents, tokenizer, context_size, seed, **window_options):
        batch.append(window_T)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch and not drop_last:
        yield torch.stack(batch)


# ------------------------------------------------------------------------------------------------
# Spread samples of a split (evaluation, the explorer's index)
# ------------------------------------------------------------------------------------------------

#: A sample reads the first ``SAMPLE_POOL_FACTOR`` times as many windows as it needs (the whole split of a
#: small corpus) and takes them in ``spread_order``. The first windows alone are the first few documents
#: of the shuffled order: on the embedded corpus, the first 32,768 held-out tokens are chats and a third
#: of one Bible book, while the split as a whole has the training mix of genres.
SAMPLE_POOL_FACTOR = 8


def spread_order(n: int) -> list[int]:
    """A permutation of ``range(n)`` whose every prefix is spread evenly over it: 0, n/2, n/4, 3n/4, ...
    (the van der Corput sequence scaled to n and rounded down, each index once). A prefix of 2^k
    indices has one index in each of 2^k equal strata."""
    if n <= 0:
        return []
    bits = max(1, (n - 1).bit_length())
    size = 1 << bits  # >= n, so the scaled sequence steps by at most 1 and reaches every index
    order: list[int] = []
    seen: set[int] = set()
    for k in range(size):
        index = int(format(k, f"0{bits}b")[::-1], 2) * n // size
        if index not in seen:
            seen.add(index)
            order.append(index)
    return order


def spread_windows(
    windows: Iterable[torch.Tensor], needed: int, pool_factor: int = SAMPLE_POOL_FACTOR
) -> Iterator[torch.Tensor]:
    """The first ``needed * pool_factor`` of ``windows``, in ``spread_order``: any prefix a caller consumes
    samples the whole pool evenly. Deterministic; the pool is held in memory (8 bytes per token)."""
    if needed < 1 or pool_factor < 1:
        raise ValueError(f"needed and pool_factor must be >= 1; got {needed}, {pool_factor}")
    pool = list(itertools.islice(windows, needed * pool_factor))
    for index in spread_order(len(pool)):
        yield pool[index]


def windows_for_tokens(tokens: int, context_size: int) -> int:
    """Windows that hold ``tokens`` stream tokens (each window is BOS + ``context_size - 1`` of them)."""
    return max(1, -(-tokens // (context_size - 1)))
