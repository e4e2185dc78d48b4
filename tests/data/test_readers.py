"""User corpus sources: .txt files and folders, .jsonl, .parquet and Hugging Face datasets."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saescope.data import documents
from saescope.data.corpus import iter_documents
from saescope.data.documents import CorpusError, split_long_text


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
