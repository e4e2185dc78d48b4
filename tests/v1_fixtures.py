"""The version-1 fixtures of tests/fixtures/v1 (files as saescope wrote them before saved configs carried a
schema_version) and the settings that made them, for test modules to import.

The fixtures' script is loaded by its path (tests/fixtures/v1 is not a package), like tests/tiny_models.py."""

from __future__ import annotations

import shutil
from pathlib import Path

from saescope.pipeline import RunConfig
from tiny_models import load_module

V1 = Path(__file__).parent / "fixtures" / "v1"


_SCRIPT = load_module(V1 / "make_v1_fixtures.py", "saescope_make_v1_fixtures")
#: The settings of the fixture run (its model and corpus relative to the working directory).
RUN_CONFIG: RunConfig = _SCRIPT.RUN_CONFIG
#: Training steps the fixture run had done when it was stopped.
STOPPED_AT: int = _SCRIPT.STOPPED_AT
build_model_and_corpus = _SCRIPT.build_model_and_corpus
#: The stopped run folder (run_config.json, stages.json, cache/, train/checkpoint.pt, train/source.json).
V1_RUN = V1 / "run"
#: ``<name>.config.json`` and ``<name>.safetensors`` of each dictionary of the same run trained to the end.
V1_FINISHED = V1 / "finished"


def v1_run_in(folder: Path) -> Path:
    """The tiny model and corpus in ``folder`` (the working directory the fixture's relative paths need), and a
    copy of the stopped fixture run at ``folder/run``; returns the run folder."""
    build_model_and_corpus(folder)
    shutil.copytree(V1_RUN, folder / "run")
    return folder / "run"


def finished_names() -> list[str]:
    """The names of the fixture run's dictionaries."""
    return sorted(path.name.removesuffix(".config.json") for path in V1_FINISHED.glob("*.config.json"))
