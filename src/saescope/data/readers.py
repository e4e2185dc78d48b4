"""User corpus sources -> documents: a .txt file, a folder of .txt files, a .jsonl or .parquet file (one row =
one document, text or a ``messages`` conversation under ``text_field``), or ``"hf:<name>[:<config>]"``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from saescope.data.chat import parse_messages
from saescope.data.documents import CorpusError, Document, document_pieces, read_text
from saescope.models.loading import ONLINE_ENV, online_by_default

_FORMATS_HINT = (
    "saescope reads 'embedded', a .txt file, a folder of .txt files, a .jsonl file (one JSON object per "
    "line), a .parquet file, or 'hf:<name>[:<config>]'"
)


def _iter_txt(path: Path, document_id: str) -> Iterator[Document]:
    yield from document_pieces(document_id, read_text(path), str(path), "user")


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


def read_user_source(source: str, text_field: str, online: bool | None) -> Iterator[Document]:
    """The documents of a user source in its own order; errors about the source are raised here or at the first
    ``next``. ``online`` (None: ``SAESCOPE_ONLINE``) allows ``hf:`` sources to reach the Hub."""
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
