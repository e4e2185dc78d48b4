"""Documents -> fixed-length token windows that start with BOS, and spread samples of them (method §2.3, §6.4).

Documents are put in a seeded order, tokenised without special tokens, each followed by EOS, concatenated, and
cut into windows of ``context_size`` tokens, each being ``[BOS] + context_size - 1`` stream tokens.
``special_token_mask`` marks the positions whose activations are kept (everything except BOS, EOS, padding and
other special tokens).

Chat formatting (:mod:`saescope.data.chat`): each document is wrapped in the chat template as a user turn
followed by the model-turn prefix (a conversation is rendered as it is), and the user-turn prefix positions are
dropped too. Those positions hold ordinary tokens, so a window carries its own boolean ``chat_keep`` mask beside
its ids (``TokenWindow``, ``WindowBatch``) through packing, shuffling and batching;
``WindowBatch.kept_positions`` combines it with the special tokens. The ids are always the model's own.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from saescope.data.chat import ChatFormat, ChatTemplateError, conversation_chat, document_chat
from saescope.data.documents import Document

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
    """Bool tensor shaped like ``ids_BT``: True at the positions to KEEP, False at special tokens. (A chat
    corpus drops more positions: ``WindowBatch.kept_positions`` adds its mask.)

    ``tokenizer_or_ids`` is a tokenizer (its ``special_token_ids``) or a collection of token ids.
    """
    if hasattr(tokenizer_or_ids, "all_special_ids") or hasattr(tokenizer_or_ids, "bos_token_id"):
        special = special_token_ids(tokenizer_or_ids)
    else:
        special = frozenset(int(i) for i in tokenizer_or_ids)
    special_ids = torch.tensor(sorted(special), dtype=ids_BT.dtype, device=ids_BT.device)
    return ~torch.isin(ids_BT, special_ids)


@dataclass(frozen=True)
class TokenWindow:
    """One token window: the ids the model reads, and which positions the corpus's mask policy keeps."""

    ids_T: torch.Tensor  # (T,) int64, BOS first
    #: (T,) bool: False where a chat mask policy drops an ordinary token (the user-turn prefix) or a turn token;
    #: True everywhere for plain text. Special tokens are dropped by ``special_token_mask`` on top of it.
    chat_keep_T: torch.Tensor

    @classmethod
    def of_ids(cls, ids_T: torch.Tensor) -> TokenWindow:
        """A plain-text window: the mask policy keeps every position (special tokens aside)."""
        return cls(ids_T, torch.ones_like(ids_T, dtype=torch.bool))


@dataclass(frozen=True)
class WindowBatch:
    """(B, T) token windows and their chat mask: what an activation stream, an evaluation or a fine-tuning step
    reads. ``ids_BT`` are the model's own ids; ``kept_positions`` says whose activations count."""

    ids_BT: torch.Tensor  # (B, T) int64
    chat_keep_BT: torch.Tensor  # (B, T) bool, as ``TokenWindow.chat_keep_T``

    def __post_init__(self) -> None:
        if self.ids_BT.dim() != 2 or self.chat_keep_BT.shape != self.ids_BT.shape:
            raise ValueError(
                f"WindowBatch needs (B, T) ids and a mask of the same shape; got {tuple(self.ids_BT.shape)} and "
                f"{tuple(self.chat_keep_BT.shape)}"
            )
        if self.chat_keep_BT.dtype != torch.bool:
            raise ValueError(f"WindowBatch.chat_keep_BT must be a bool tensor; got {self.chat_keep_BT.dtype}")

    @classmethod
    def stack(cls, windows: Sequence[TokenWindow]) -> WindowBatch:
        """Windows of one length stacked into a batch."""
        return cls(torch.stack([w.ids_T for w in windows]), torch.stack([w.chat_keep_T for w in windows]))

    @classmethod
    def of_ids(cls, ids_BT: torch.Tensor) -> WindowBatch:
        """Plain-text windows: the mask policy keeps every position (special tokens aside)."""
        return cls(ids_BT, torch.ones_like(ids_BT, dtype=torch.bool))

    @property
    def n_windows(self) -> int:
        return int(self.ids_BT.shape[0])

    def to(self, device: torch.device | str) -> WindowBatch:
        return WindowBatch(self.ids_BT.to(device), self.chat_keep_BT.to(device))

    def kept_positions(self, special_ids: Collection[int]) -> torch.Tensor:
        """(B, T) bool: True at the positions whose activations are used (no special token, kept by the chat
        mask policy)."""
        return special_token_mask(self.ids_BT, special_ids) & self.chat_keep_BT


def stack_windows(
    windows: Iterable[TokenWindow], batch_windows: int, *, drop_last: bool = False
) -> Iterator[WindowBatch]:
    """Group windows into batches of ``batch_windows``; the last one may be smaller unless ``drop_last``."""
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1; got {batch_windows}")
    batch: list[TokenWindow] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_windows:
            yield WindowBatch.stack(batch)
            batch = []
    if batch and not drop_last:
        yield WindowBatch.stack(batch)


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


#: A document's token ids and, for a chat corpus, which of them its mask policy keeps (None: all of them).
_Tokens = tuple[list[int], list[bool] | None]


def _token_lists(
    documents: Iterable[Document | str], tokenizer: Any, batch_size: int, chat: ChatFormat | None, bos: int
) -> Iterator[_Tokens]:
    batch: list[Document | str] = []
    for document in documents:
        batch.append(document)
        if len(batch) == batch_size:
            yield from _encode(tokenizer, batch, chat, bos)
            batch = []
    if batch:
        yield from _encode(tokenizer, batch, chat, bos)


def _encode(tokenizer: Any, documents: list[Document | str], chat: ChatFormat | None, bos: int) -> list[_Tokens]:
    if chat is not None:
        chats = [
            conversation_chat(d.messages) if isinstance(d, Document) and d.messages is not None
            else document_chat(d.text if isinstance(d, Document) else d)
            for d in documents
        ]  # fmt: skip
        masked: list[_Tokens] = []
        for encoded in chat.encode(chats):
            # The window's own BOS starts each window; inside a window documents follow an EOS, as in plain text.
            start = 1 if encoded.ids[:1] == [bos] else 0
            masked.append((list(encoded.ids[start:]), list(encoded.keep[start:])))
        return masked
    for document in documents:
        if isinstance(document, Document) and document.messages is not None:
            raise ChatTemplateError(
                f"document {document.id!r} is a conversation (a messages list): set a chat template to render "
                "it (CorpusConfig.chat_template, --chat or --chat-template)"
            )
    texts = [d.text if isinstance(d, Document) else d for d in documents]
    # verbose=False: documents are longer than the model's context on purpose (they are packed later).
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return [(list(ids), None) for ids in encoded["input_ids"]]


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
) -> Iterator[TokenWindow]:
    """Windows of T = ``context_size`` tokens: ``[BOS]`` then ``T - 1`` tokens of the stream.

    The stream is the documents in a seeded order, each tokenised without special tokens and followed by
    EOS; a window may start or end inside a document. The last, incomplete window is dropped.

    Order: ``shuffle_buffer=None`` sorts all documents by a hash of (seed, epoch, id): a full shuffle,
    independent of the order they arrive in (holds every text in memory). ``shuffle_buffer=n`` shuffles
    a stream through an n-document buffer instead; ``0`` keeps the given order. Plain strings count as
    documents whose id is their position. ``window_shuffle=n`` then draws the windows at random from a buffer
    of n consecutive windows (seeded by seed and epoch), so that neighbouring windows come from different
    documents; ``0`` keeps them in stream order.

    With ``chat``, each document is rendered as a user turn plus the model-turn prefix (a conversation as
    it is), the template's leading BOS dropped, and the positions its mask excludes are False in ``chat_keep_T``.
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
) -> Iterator[TokenWindow]:
    """The ordered documents packed into ``[BOS] + T - 1`` token windows, in stream order; the chat mask is
    packed beside the ids (BOS and the EOS after each document are special tokens: the mask keeps them)."""
    span = context_size - 1
    pending_ids: list[int] = []
    pending_keep: list[bool] = []
    ordered = _ordered_documents(documents, seed, epoch, shuffle_buffer)
    for ids, keep in _token_lists(ordered, tokenizer, tokenize_batch_size, chat, bos):
        pending_ids.extend(ids)
        pending_ids.append(eos)
        pending_keep.extend(keep if keep is not None else [True] * len(ids))
        pending_keep.append(True)
        n_windows = len(pending_ids) // span
        if n_windows == 0:
            continue
        body_ids_WS = torch.tensor(pending_ids[: n_windows * span], dtype=torch.long).view(n_windows, span)
        body_keep_WS = torch.tensor(pending_keep[: n_windows * span], dtype=torch.bool).view(n_windows, span)
        del pending_ids[: n_windows * span], pending_keep[: n_windows * span]
        ids_WT = torch.cat([torch.full((n_windows, 1), bos, dtype=torch.long), body_ids_WS], dim=1)
        keep_WT = torch.cat([torch.ones((n_windows, 1), dtype=torch.bool), body_keep_WS], dim=1)
        for ids_T, keep_T in zip(ids_WT, keep_WT, strict=True):
            yield TokenWindow(ids_T, keep_T)


def iter_token_batches(
    documents: Iterable[Document | str],
    tokenizer: Any,
    batch_size: int,
    context_size: int = 1024,
    seed: int = 0,
    *,
    drop_last: bool = False,
    **window_options: Any,
) -> Iterator[WindowBatch]:
    """Batches of ``iter_token_windows``; the last one may be smaller unless ``drop_last``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    windows = iter_token_windows(documents, tokenizer, context_size, seed, **window_options)
    return stack_windows(windows, batch_size, drop_last=drop_last)


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


def spread_windows(windows: Iterable[_Item], needed: int, pool_factor: int = SAMPLE_POOL_FACTOR) -> Iterator[_Item]:
    """The first ``needed * pool_factor`` of ``windows``, in ``spread_order``: any prefix a caller consumes
    samples the whole pool evenly. Deterministic; the pool is held in memory (9 bytes per token: id and mask)."""
    if needed < 1 or pool_factor < 1:
        raise ValueError(f"needed and pool_factor must be >= 1; got {needed}, {pool_factor}")
    pool = list(itertools.islice(windows, needed * pool_factor))
    for index in spread_order(len(pool)):
        yield pool[index]


def windows_for_tokens(tokens: int, context_size: int) -> int:
    """Windows that hold ``tokens`` stream tokens (each window is BOS + ``context_size - 1`` of them)."""
    return max(1, -(-tokens // (context_size - 1)))
