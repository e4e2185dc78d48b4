"""What the trainer writes is checksummed and checked when read back: checkpoints and dictionary weights."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from test_trainer import RES, config, jumprelu_spec, sparse_data

from saescope.atomic import CorruptFileError, checksum_path, sha256_file
from saescope.data.arrays import ArrayActivations
from saescope.dictionaries.folder import read_suite
from saescope.release import export_release
from saescope.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

HEX = "[0-9a-f]{64}"


def source() -> ArrayActivations:
    return ArrayActivations({RES: sparse_data(2_000)[0]})


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_checkpoints_and_weights_are_written_with_their_checksums(tmp_path: Path) -> None:
    Trainer([jumprelu_spec()], source(), config(5), tmp_path).run()
    for path in (tmp_path / "checkpoint.pt", tmp_path / "saes" / "jr" / "sae.safetensors"):
        assert checksum_path(path).read_text() == f"{sha256_file(path)}  {path.name}\n"


def test_a_corrupted_checkpoint_is_named_with_both_checksums_and_the_way_to_start_over(tmp_path: Path) -> None:
    Trainer([jumprelu_spec()], source(), config(30), tmp_path).run(max_steps=25)
    checkpoint = tmp_path / "checkpoint.pt"
    flip_a_byte(checkpoint)
    damaged = checkpoint.read_bytes()
    expected = rf"checkpoint\.pt is corrupted: its SHA-256 is {HEX}, but checkpoint\.pt\.sha256 .* {HEX}\..*mv "
    with pytest.raises(CorruptFileError, match=expected):
        Trainer([jumprelu_spec()], source(), config(30), tmp_path).run()
    assert checkpoint.read_bytes() == damaged  # nothing deleted or rewritten
    checkpoint.rename(tmp_path / "checkpoint.pt.unusable")  # what the message says to do
    Trainer([jumprelu_spec()], source(), config(30), tmp_path).run()
    assert torch.load(checkpoint, weights_only=False)["step"] == 30


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_an_unreadable_checkpoint_without_a_checksum_is_named(tmp_path: Path, damage: str) -> None:
    """A checkpoint written before checksums were recorded, then damaged: torch cannot read it."""
    Trainer([jumprelu_spec()], source(), config(30), tmp_path).run(max_steps=25)
    checkpoint = tmp_path / "checkpoint.pt"
    checksum_path(checkpoint).unlink()
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint at all")
    with pytest.raises(CorruptFileError, match=r"checkpoint\.pt is unreadable: it is truncated .*mv .*new output"):
        Trainer([jumprelu_spec()], source(), config(30), tmp_path).run()


def test_a_checkpoint_without_a_checksum_still_resumes_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Trainer([jumprelu_spec()], source(), config(30), tmp_path / "straight").run()
    Trainer([jumprelu_spec()], source(), config(30), tmp_path / "old").run(max_steps=25)
    checksum_path(tmp_path / "old" / "checkpoint.pt").unlink()  # as written before checksums were recorded
    with caplog.at_level(logging.WARNING, logger="saescope.atomic"):
        Trainer([jumprelu_spec()], source(), config(30), tmp_path / "old").run()
    assert any("checkpoint.pt has no recorded checksum" in record.getMessage() for record in caplog.records)
    straight, resumed = (
        torch.load(tmp_path / name / "checkpoint.pt", weights_only=False) for name in ("straight", "old")
    )
    for key, value in straight["members"]["jr"]["sae"].items():
        assert torch.equal(value, resumed["members"]["jr"]["sae"][key]), key


def test_a_corrupted_dictionary_is_named_when_read_and_never_exported(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer([jumprelu_spec()], source(), config(5), run).run()
    weights = run / "saes" / "jr" / "sae.safetensors"
    flip_a_byte(weights)  # same size, still parses: only the checksum notices
    expected = rf"sae\.safetensors is corrupted: its SHA-256 is {HEX}, but .* records {HEX}\. .*rerun the training"
    (entry,) = read_suite(run)
    with pytest.raises(CorruptFileError, match=expected):
        entry.raw_space()
    with pytest.raises(CorruptFileError, match=expected):
        export_release(run, tmp_path / "release", ["gemmascope2"])
    assert not (tmp_path / "release").exists()
    # Rerunning the training command rewrites the dictionary from the final checkpoint.
    Trainer([jumprelu_spec()], source(), config(5), run).run()
    read_suite(run)[0].raw_space()


def test_a_dictionary_without_a_checksum_still_loads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer([jumprelu_spec()], source(), config(5), run).run()
    copy = tmp_path / "old" / "saes" / "jr"
    shutil.copytree(run / "saes" / "jr", copy, ignore=shutil.ignore_patterns("*.sha256"))
    (entry,) = read_suite(tmp_path / "old")
    assert entry.raw_space().config.width == 64
