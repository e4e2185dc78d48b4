"""Release folders carry each weight file's SHA-256 beside it, so a folder taken out of its release (away from
the release manifest) is still checked when it is loaded."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from saescope.atomic import CorruptFileError, checksum_path, sha256_file
from saescope.release import export_release, load_sae

WEIGHT_FILES = {"gemmascope": "params.npz", "gemmascope2": "params.safetensors", "saelens": "sae_weights.safetensors"}


def standalone_copy(suite_run: Path, tmp_path: Path, format_id: str) -> Path:
    """One exported dictionary folder, copied out of its release (its checksum files travel with it)."""
    export_release(suite_run, tmp_path / "release", [format_id])
    weights = sorted((tmp_path / "release").rglob(WEIGHT_FILES[format_id]))[0]
    copy = tmp_path / "standalone"
    shutil.copytree(weights.parent, copy)
    return copy


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a weight's bits: same size, and the format may not notice
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("format_id", sorted(WEIGHT_FILES))
def test_a_flipped_byte_in_a_standalone_release_folder_is_named(
    suite_run: Path, tmp_path: Path, format_id: str
) -> None:
    folder = standalone_copy(suite_run, tmp_path, format_id)
    weights = folder / WEIGHT_FILES[format_id]
    assert checksum_path(weights).read_text() == f"{sha256_file(weights)}  {weights.name}\n"
    load_sae(folder)
    flip_a_byte(weights)
    expected = rf"{weights.name} is corrupted: its SHA-256 is [0-9a-f]{{64}}, but .*export the release again"
    with pytest.raises(CorruptFileError, match=expected):
        load_sae(folder)


def test_a_standalone_folder_without_checksums_loads_with_a_note(
    suite_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = standalone_copy(suite_run, tmp_path, "gemmascope2")
    checksum_path(folder / "params.safetensors").unlink()  # as exported before checksums were recorded
    with caplog.at_level(logging.WARNING, logger="saescope.atomic"):
        load_sae(folder)
    assert [r.getMessage() for r in caplog.records if "no recorded checksum" in r.getMessage()]


def test_a_corrupted_trained_dictionary_is_not_loaded(suite_run: Path) -> None:
    """`load_sae` on a trained folder checks the weights the trainer recorded (here: recorded, then damaged)."""
    weights = suite_run / "saes" / "res-a" / "sae.safetensors"
    checksum_path(weights).write_text(f"{sha256_file(weights)}  {weights.name}\n")
    load_sae(weights.parent)
    flip_a_byte(weights)
    with pytest.raises(CorruptFileError, match=r"sae\.safetensors is corrupted.*rerun the training command"):
        load_sae(weights.parent)
