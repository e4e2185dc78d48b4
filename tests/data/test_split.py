"""The held-out split: drawn per document id by a salted SHA-256, disjoint from training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from saescope.data.corpus import iter_documents
from saescope.data.split import is_heldout


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
