from __future__ import annotations

import json
from pathlib import Path

import pytest

from saescope.atomic import (
    CorruptFileError,
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    verify_manifest,
)


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failed_directory_write_leaves_the_old_target(tmp_path: Path) -> None:
    target = tmp_path / "release"
    with atomic_directory(target) as staging:
        atomic_write_text(staging / "a.txt", "old")

    def write_then_fail() -> None:
        with atomic_directory(target) as staging:
            atomic_write_text(staging / "a.txt", "new")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]
    verify_manifest(target)


def test_corruption_is_named(tmp_path: Path) -> None:
    target = tmp_path / "release"
    with atomic_directory(target) as staging:
        atomic_write_text(staging / "w.bin", "0123456789")
    (target / "w.bin").write_text("0123456780")
    with pytest.raises(CorruptFileError, match=r"w\.bin does not match its recorded SHA-256"):
        verify_manifest(target)
    (target / "w.bin").write_text("01")
    with pytest.raises(CorruptFileError, match=r"w\.bin has 2 bytes, expected 10"):
        verify_manifest(target)
