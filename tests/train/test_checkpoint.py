"""Checkpoints written before the recipe elements moved out of the trainer still resume, bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from old_checkpoint_run import DATA, KILLED_AT, SETTINGS, TOTAL_STEPS, old_checkpoint_trainer
from safetensors.torch import load_file

from saescope.train import TrainedDictionary

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_weights_are_the_old_codes(settings: str, trained: list[TrainedDictionary]) -> None:
    for result in trained:
        expected = load_file(DATA / settings / f"final-{result.name}.safetensors")
        saved = load_file(result.folder / "sae.safetensors")
        assert saved.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(saved[key], value), (result.name, key)


@pytest.mark.parametrize("settings", list(SETTINGS))
def test_a_checkpoint_written_before_the_elements_moved_resumes_to_the_old_codes_weights(
    settings: str, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):
        shutil.copyfile(DATA / settings / name, folder / name)
    trainer = old_checkpoint_trainer(settings, folder)
    trained = trainer.run()
    assert trainer.step == TOTAL_STEPS > KILLED_AT
    _assert_weights_are_the_old_codes(settings, trained)


@pytest.mark.parametrize("settings", list(SETTINGS))
def test_a_run_trained_straight_through_gives_the_old_codes_weights(settings: str, tmp_path: Path) -> None:
    _assert_weights_are_the_old_codes(settings, old_checkpoint_trainer(settings, tmp_path).run())
