"""Labelled text for sparse probing: the embedded corpus's genres (its held-out split, cut into short token
chunks), a user's labelled ``.jsonl``/``.csv``/``.parquet`` file, or a Hugging Face dataset (``hf:<name>``, with
``--online``)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.data.corpus import iter_documents
from saescope.data.embedded import EMBEDDED_SOURCE
from saescope.eval.interp.common import ProbeDataSpec
from saescope.models.loading import ONLINE_ENV, online_by_default

LABELLED_SUFFIXES = (".jsonl", ".csv", ".parquet")
#: A Hugging Face dataset as probe data is written as a corpus source is: ``hf:<name>[:<config>]``.
HUB_PREFIX = "hf:"
#: The split of a Hugging Face dataset that probing reads (its own train/test split is drawn from it).
HUB_SPLIT = "train"


@dataclass(frozen=True)
class LabelledSample:
    """One probing input: a stable ``key`` (it decides the train/test split), its token ids and its label."""

    key: str
    token_ids: tuple[int, ...]
    label: str


def _spread(samples: list[LabelledSample], limit: int, seed: int) -> list[LabelledSample]:
    """At most ``limit`` samples, a fixed pseudo-random choice (by hash of the key)."""
    if len(samples) <= limit:
        return samples

    def key(sample: LabelledSample) -> bytes:
        return hashlib.sha256(f"{seed}:{sample.key}".encode()).digest()

    return sorted(samples, key=key)[:limit]


def _bos(tokenizer: Any) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if isinstance(bos, int) else []


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def genre_samples(
    tokenizer: Any, *, max_tokens: int, per_genre: int, seed: int = 0, source: str = EMBEDDED_SOURCE
) -> list[LabelledSample]:
    """Chunks of ``max_tokens`` tokens (after a BOS) of the held-out documents of the embedded corpus, labelled
    with their document's genre; at most ``per_genre`` per genre. Chunks of one document may fall on both sides
    of the probe's split: the held-out split has few, long documents in some genres."""
    by_genre: dict[str, list[LabelledSample]] = {}
    bos = _bos(tokenizer)
    for document in iter_documents(source, "heldout"):
        ids = _token_ids(tokenizer, document.text)
        for index, start in enumerate(range(0, max(len(ids) - max_tokens // 2, 1), max_tokens)):
            chunk = ids[start : start + max_tokens]
            key = f"{document.id}@{index}"
            by_genre.setdefault(document.genre, []).append(LabelledSample(key, (*bos, *chunk), document.genre))
    return [sample for genre in sorted(by_genre) for sample in _spread(by_genre[genre], per_genre, seed)]


def _rows_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number} is not valid JSON ({error.msg}): fix or remove it") from error
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number} is not a JSON object: each line must be one labelled record")
            yield row


def _rows_csv(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        yield from csv.DictReader(handle)


def _rows_parquet(path: Path, fields: list[str]) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ValueError(f"reading {path} needs pyarrow: pip install pyarrow, or pass a .jsonl or .csv file") from error
    table = pq.read_table(path)
    missing = [field for field in fields if field not in table.column_names]
    if missing:
        raise ValueError(_missing_fields(path, missing, table.column_names))
    yield from table.select(fields).to_pylist()


def hub_dataset(spec: ProbeDataSpec) -> tuple[str, str | None] | None:
    """(name, config) of probe data written ``hf:<name>[:<config>]``; None for a local file."""
    text = str(spec.path)
    if not text.startswith(HUB_PREFIX):
        return None
    name, _, config = text.removeprefix(HUB_PREFIX).partition(":")
    if not name:
        raise ValueError(f"probe data {text!r}: write a Hugging Face dataset as 'hf:<name>' or 'hf:<name>:<config>'")
    return name, config or None


def _rows_hub(spec: ProbeDataSpec, name: str, config: str | None, fields: list[str]) -> Iterator[dict[str, Any]]:
    """The records of the dataset's train split, downloaded (or read from the Hugging Face cache) by
    ``datasets.load_dataset``; a class-label field gives its class names rather than their numbers."""
    source = str(spec.path)
    if not (online_by_default() if spec.online is None else spec.online):
        raise ValueError(
            f"probe data {source!r} is a Hugging Face dataset, which saescope does not download by default: pass "
            f"--online (or set {ONLINE_ENV}=1), or save it as a local {'/'.join(LABELLED_SUFFIXES)} file"
        )
    try:
        import datasets
    except ImportError as error:
        raise ValueError(f"probe data {source!r} needs the `datasets` library: pip install datasets") from error
    try:
        dataset = datasets.load_dataset(name, config, split=HUB_SPLIT)
    except Exception as error:  # datasets raises many types (network, missing config or split, auth)
        raise ValueError(f"could not open probe data {source!r} (its {HUB_SPLIT!r} split): {error}") from error
    missing = [field for field in fields if field not in dataset.column_names]
    if missing:
        raise ValueError(_missing_fields(source, missing, list(dataset.column_names)))
    class_names = getattr(dataset.features.get(spec.label_field), "names", None)
    for row in dataset.select_columns(fields):
        label = row[spec.label_field]
        if class_names and isinstance(label, int) and 0 <= label < len(class_names):
            row = {**row, spec.label_field: class_names[label]}
        yield row


def _missing_fields(path: Path | str, missing: list[str], present: list[str]) -> str:
    return (
        f"{path} has no field {missing[0]!r} (its fields: {present}); name the text and label fields with "
        "--text-field and --label-field"
    )


def read_labelled_rows(spec: ProbeDataSpec) -> list[tuple[str, str]]:
    """(text, label) for every record of the file (or Hub dataset). Records with an empty text or label are
    skipped; a missing field, an unreadable file, an unsupported suffix or a Hub dataset without ``online`` is a
    ValueError that says what to pass."""
    path = Path(spec.path)
    fields = [spec.text_field, spec.label_field]
    hub = hub_dataset(spec)
    if hub is None and not path.is_file():
        raise ValueError(
            f"probe data {path} does not exist: pass a labelled {'/'.join(LABELLED_SUFFIXES)} file, or "
            f"{HUB_PREFIX}<dataset> with --online"
        )
    suffix = path.suffix.lower()
    if hub is not None:
        rows: Iterator[dict[str, Any]] = _rows_hub(spec, *hub, fields)
    elif suffix == ".jsonl":
        rows = _rows_jsonl(path)
    elif suffix == ".csv":
        rows = _rows_csv(path)
    elif suffix == ".parquet":
        rows = _rows_parquet(path, fields)
    else:
        raise ValueError(f"probe data {path}: cannot read {suffix or 'extension-less'} files; pass a "
                         f"{', '.join(LABELLED_SUFFIXES)} file")  # fmt: skip
    records = []
    for number, row in enumerate(rows, start=1):
        missing = [field for field in fields if field not in row]
        if missing:
            raise ValueError(_missing_fields(path, missing, sorted(row)) + f" (record {number})")
        text, label = row[spec.text_field], row[spec.label_field]
        if text is None or label is None or str(text).strip() == "" or str(label).strip() == "":
            continue
        records.append((str(text), str(label)))
    if not records:
        raise ValueError(f"probe data {path} holds no record with both {spec.text_field!r} and {spec.label_field!r}")
    return records


def file_samples(
    tokenizer: Any, spec: ProbeDataSpec, *, max_tokens: int, per_label: int, seed: int = 0
) -> list[LabelledSample]:
    """The file's records as samples (each text's first ``max_tokens`` tokens after a BOS); at most
    ``per_label`` per label."""
    bos = _bos(tokenizer)
    by_label: dict[str, list[LabelledSample]] = {}
    for row, (text, label) in enumerate(read_labelled_rows(spec)):
        ids = _token_ids(tokenizer, text)[:max_tokens]
        if ids:
            by_label.setdefault(label, []).append(LabelledSample(f"{Path(spec.path).name}:{row}", (*bos, *ids), label))
    return [sample for label in sorted(by_label) for sample in _spread(by_label[label], per_label, seed)]
