from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from saescope.atomic import (
    CorruptFileError,
    atomic_directory,
    atomic_write_checksummed,
    atomic_write_json,
    atomic_write_text,
    checksum_path,
    read_json_object,
    remove_checksummed,
    sha256_file,
    verify_checksum,
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


# --- one file's checksum, recorded beside it ------------------------------------------------------------

REMEDY = "Write it again."


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_checksummed_file_verifies_and_a_flipped_byte_is_named_with_both_checksums(tmp_path: Path) -> None:
    target = tmp_path / "w.bin"
    digest = atomic_write_checksummed(target, lambda handle: handle.write(b"0123456789"))
    assert checksum_path(target).read_text() == f"{digest}  w.bin\n"  # the sha256sum format
    assert verify_checksum(target, REMEDY) is True
    flip_a_byte(target)
    actual = sha256_file(target)
    expected = rf"w\.bin is corrupted: its SHA-256 is {actual}, but .*{digest}\. Write"
    with pytest.raises(CorruptFileError, match=expected):
        verify_checksum(target, REMEDY)
    target.write_bytes(b"01234")  # truncated
    with pytest.raises(CorruptFileError, match=r"w\.bin is corrupted"):
        verify_checksum(target, REMEDY)


def test_a_file_without_a_recorded_checksum_loads_with_one_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "old.bin"
    target.write_bytes(b"written before checksums")
    with caplog.at_level(logging.WARNING, logger="saescope.atomic"):
        assert verify_checksum(target, REMEDY) is False
        assert verify_checksum(target, REMEDY) is False
    notes = [record.getMessage() for record in caplog.records]
    assert len(notes) == 1
    assert "old.bin has no recorded checksum" in notes[0]


def test_a_damaged_checksum_record_is_named(tmp_path: Path) -> None:
    target = tmp_path / "w.bin"
    atomic_write_checksummed(target, lambda handle: handle.write(b"data"))
    checksum_path(target).write_text("not a digest\n")
    with pytest.raises(CorruptFileError, match=r"w\.bin\.sha256 is damaged.*Write it again"):
        verify_checksum(target, REMEDY)


def test_a_kill_before_the_rename_leaves_a_file_that_still_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "checkpoint.pt"
    atomic_write_checksummed(target, lambda handle: handle.write(b"step 1"))
    real_replace = os.replace

    def killed_before_replacing_the_target(source: str, destination: str | Path) -> None:
        if Path(destination) == target:
            raise KeyboardInterrupt  # the new checksum record is written; the new file never lands
        real_replace(source, destination)

    monkeypatch.setattr("saescope.atomic.os.replace", killed_before_replacing_the_target)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_checksummed(target, lambda handle: handle.write(b"step 2"))
    monkeypatch.undo()
    assert target.read_bytes() == b"step 1"
    assert verify_checksum(target, REMEDY) is True
    atomic_write_checksummed(target, lambda handle: handle.write(b"step 2"))  # the next write records one digest
    assert len(checksum_path(target).read_text().splitlines()) == 1
    assert verify_checksum(target, REMEDY) is True


def test_removing_a_checksummed_file_removes_its_record(tmp_path: Path) -> None:
    target = tmp_path / "w.bin"
    atomic_write_checksummed(target, lambda handle: handle.write(b"data"))
    remove_checksummed(target)
    assert list(tmp_path.iterdir()) == []


def test_a_json_object_is_read_and_other_files_raise_the_callers_error(tmp_path: Path) -> None:
    good, listed, broken = tmp_path / "good.json", tmp_path / "list.json", tmp_path / "broken.json"
    good.write_text('{"a": 1}')
    listed.write_text("[1, 2]")
    broken.write_text("{")
    assert read_json_object(good, ValueError) == {"a": 1}
    with pytest.raises(CorruptFileError, match=r"list\.json must hold a JSON object, not list"):
        read_json_object(listed, CorruptFileError)
    with pytest.raises(KeyError, match=r"broken\.json is not valid JSON: "):
        read_json_object(broken, KeyError)
