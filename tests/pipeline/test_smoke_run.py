"""The `smoke` preset end to end on the real embedded Gemma 3 270M (slow: about two minutes)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from saescope.cli import main
from saescope.pipeline import STAGES, SuiteRun, list_presets, load_preset
from saescope.release import load_sae

pytestmark = pytest.mark.slow


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_smoke_preset_runs_end_to_end_and_resumes_without_retraining(tmp_path: Path) -> None:
    folder = tmp_path / "smoke"
    suite = SuiteRun.create(folder, load_preset("smoke"), log=lambda _: None)
    suite.execute(until="train")  # "killed" after training
    weights = sorted((folder / "train" / "saes").glob("*/sae.safetensors"))
    assert len(weights) == 6
    before = {path: digest(path) for path in weights}
    messages: list[str] = []
    stages = SuiteRun.resume(folder, log=messages.append).execute()
    assert list(stages) == list(STAGES)
    assert "[train] already done, skipped" in messages
    assert {path: digest(path) for path in weights} == before  # not retrained

    with (folder / "report" / "suite.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    for row in rows:
        assert 0.0 < float(row["fvu"]) < 1.5
        assert float(row["l0"]) > 0
        assert row["delta_lm_loss"] != ""
    assert (folder / "report" / "report.html").is_file()
    assert len(list((folder / "report").glob("*.png"))) >= 4
    npz = sorted((folder / "release" / "gemmascope").rglob("params.npz"))
    assert len(npz) == 6
    loaded = load_sae(npz[0].parent)
    assert loaded.sae.config.width == 512


def test_presets_are_listed_and_valid() -> None:
    presets = list_presets()
    assert {"default", "smoke", "gemma-scope-2b", "gemma-scope-9b", "gemma-scope-2-270m"} <= set(presets)
    for name in presets:
        load_preset(name)


def test_list_presets_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--list-presets"]) == 0
    assert "smoke" in capsys.readouterr().out
