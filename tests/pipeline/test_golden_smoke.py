"""Golden pin of the `smoke` preset's training stage on the real embedded Gemma 3 270M (slow: a few minutes):
every trained tensor and saved config (final metrics, scales, settings), bit for bit on CPU with the preset's
seed, so that restructuring how recipes reach the trainer cannot change what `saescope run` trains.

See tests/golden_pins.py for how to regenerate the pin when a change is meant to change training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from golden_pins import check_against_golden
from saescope.pipeline import SuiteRun, load_preset

GOLDEN = Path(__file__).parent / "golden" / "smoke-train.json"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_the_smoke_preset_trains_exactly_its_golden_pin(tmp_path: Path) -> None:
    folder = tmp_path / "smoke"
    SuiteRun.create(folder, load_preset("smoke"), log=lambda _: None).execute(until="train")
    check_against_golden(folder / "train", GOLDEN)
