"""Documents: the unit of text every corpus source yields, and the splitting of long texts into pieces.

The held-out split and the document shuffle are both drawn per document id, so long texts (a play, a long
speech, a Bible book, a large source file, a user's .txt file) are split at paragraph breaks into pieces.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saescope.data.chat import ChatMessage

#: Long documents (a play, a long speech, a Bible book, a large source file, a user's .txt file) are
#: split at paragraph breaks into pieces of at most this many characters, so that the held-out split,
#: which is drawn per document, is fine-grained rather than a handful of whole books.
MAX_DOCUMENT_CHARS = 50_000


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


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` with ``\\n`` line ends; a file in another encoding is a ``CorpusError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path} is not UTF-8 text ({error}); convert it to UTF-8 first") from error
    return text.replace("\r\n", "\n").replace("\r", "\n")


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


def document_pieces(
    document_id: str, text: str, source: str, genre: str, max_chars: int = MAX_DOCUMENT_CHARS
) -> Iterator[Document]:
    """``text`` as one document, or as ``<id>#<n>`` pieces of at most ``max_chars`` when it is longer; none if blank."""
    pieces = split_long_text(text.strip(), max_chars)
    if not pieces[0].strip():
        return
    if len(pieces) == 1:
        yield Document(document_id, source, genre, pieces[0])
        return
    for index, piece in enumerate(pieces):
        yield Document(f"{document_id}#{index}", source, genre, piece)
