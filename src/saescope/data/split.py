"""The held-out split: a fixed fraction of documents, chosen by a salted SHA-256 of the document id alone, so the
held-out set is the same for every run, seed and machine, and no training stream ever contains it."""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "heldout", "all"]
SPLITS: tuple[str, ...] = ("train", "heldout", "all")
DEFAULT_HELDOUT_FRACTION = 0.02

_HELDOUT_SALT = "saescope-heldout:"


def unit_hash(text: str) -> float:
    """A number in [0, 1) from the SHA-256 of ``text``: the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def is_heldout(document_id: str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> bool:
    """True when the document belongs to the held-out split (independent of seeds and of other documents)."""
    return unit_hash(_HELDOUT_SALT + document_id) < heldout_fraction


def in_split(document_id: str, split: str, heldout_fraction: float) -> bool:
    """Whether the document belongs to ``split`` ("train", "heldout" or "all")."""
    if split == "all":
        return True
    return is_heldout(document_id, heldout_fraction) == (split == "heldout")
